"""`continual adapters verify [--repair]`: check the whole store, and fix what is safe to fix.

Checked: every task version's files against their recorded sha256 (config included) and against its
tags; the shared part each version records (exists, files intact); shared versions no task version
records (left by a crash between the two registrations); each task's stored profile; the FAISS task
index against the registry's profiles.

Repairs, each reversible or rebuilt from the registry's own data, never deleting a good version:
- a task version whose files fail verification is quarantined (tag `continual.quarantined`): "newest"
  skips it, loading it still fails; a quarantined version whose files verify again is released;
- an unreferenced shared version older than `ORPHAN_GRACE_S` is deleted (nothing can name it: task
  versions record their shared version, and `shared="current"` only picks recorded ones);
- a missing, corrupt or stale task index is rebuilt from the stored profiles.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modeling.manifest import SHARED_FILE, verify_checksums
from registry import tags as T
from tasks.errors import ContinualError

if TYPE_CHECKING:
    from registry.registry import AdapterRegistry

# A shared version this young may belong to a registration still in progress in another process.
ORPHAN_GRACE_S = 600


@dataclass
class Problem:
    where: str  # "task:3", "shared-b-lora--default:2", "task index", "task 'x'"
    what: str  # the problem, in words
    repair: str | None = None  # what --repair does about it (None: nothing safe to do, a person must act)
    repaired: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class VerifyReport:
    problems: list[Problem] = field(default_factory=list)
    checked: dict[str, int] = field(default_factory=lambda: {"tasks": 0, "versions": 0, "shared versions": 0})

    @property
    def ok(self) -> bool:
        """True when nothing is left to fix (every problem found was repaired)."""
        return all(p.repaired for p in self.problems)


def verify_store(registry: "AdapterRegistry", repair: bool = False, now: float | None = None) -> VerifyReport:
    """Check every task, version, shared part and the task index; with `repair`, fix what is safe."""
    store = registry.store
    report = VerifyReport()
    now = time.time() if now is None else now
    models = store.list_models()
    referenced = registry.shared_references()

    for model in sorted(models, key=lambda m: m.name):
        if T.IS_TASK not in model.tags:
            continue
        report.checked["tasks"] += 1
        _check_profile(registry, model, report)
        for version in registry.versions(model.name):
            report.checked["versions"] += 1
            _check_version(registry, version, report, repair)

    for model in sorted(models, key=lambda m: m.name):
        if T.IS_SHARED_PART not in model.tags:
            continue
        for mv in store.versions(model.name):
            report.checked["shared versions"] += 1
            _check_shared_version(registry, model.name, mv, referenced.get(model.name, set()), report, repair, now)

    _check_index(registry, report, repair)
    return report


def _check_version(registry: "AdapterRegistry", version, report: VerifyReport, repair: bool) -> None:
    quarantined = T.QUARANTINED in version.tags
    try:
        registry.verified_adapter_dir(version)
        _check_recorded_shared(registry, version)
    except ContinualError as err:
        if quarantined:
            report.problems.append(Problem(version.ref, f"quarantined: {err}", None))
            return
        problem = Problem(version.ref, str(err), "quarantine it (newest skips it; restore its files or re-train)")
        if repair:
            registry.store.set_version_tag(version.task, version.version, T.QUARANTINED, str(err)[:4000])
            problem.repaired = True
        report.problems.append(problem)
        return
    if quarantined:
        problem = Problem(version.ref, "is quarantined but its files verify again", "release it")
        if repair:
            registry.store.delete_version_tag(version.task, version.version, T.QUARANTINED)
            problem.repaired = True
        report.problems.append(problem)


def _check_recorded_shared(registry: "AdapterRegistry", version) -> None:
    recorded = version.tags.get(T.SHARED_PART)
    if not recorded:
        return
    name, _, number = recorded.rpartition(":")
    mv = registry.store.get_version(name, int(number)) if number.isdigit() else None
    if mv is None:
        raise ContinualError(f"its shared part {recorded} is missing from the store")
    _verify_shared_files(registry, name, mv)


def _verify_shared_files(registry: "AdapterRegistry", name: str, mv) -> None:
    folder = Path(registry.store.download(mv.source, _tmpdir()))
    expected = {k[len(T.SHA_PREFIX):]: v for k, v in mv.tags.items() if k.startswith(T.SHA_PREFIX)}
    verify_checksums(folder, expected, f"shared part {name}:{mv.version}", required=(SHARED_FILE,))


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="continual-verify-")


def _check_shared_version(registry: "AdapterRegistry", name: str, mv, used: set[int], report: VerifyReport,
                          repair: bool, now: float) -> None:
    where = f"{name}:{mv.version}"
    if int(mv.version) not in used:
        age = now - int(mv.creation_timestamp or 0) / 1000
        if age < ORPHAN_GRACE_S:
            return  # may be a registration in progress; a later verify decides
        problem = Problem(where, "no task version records this shared version (a registration stopped "
                                 "between the shared part and the task version)", "delete it")
        if repair:
            registry.store.delete_version(name, int(mv.version))
            problem.repaired = True
        report.problems.append(problem)
        return
    try:
        _verify_shared_files(registry, name, mv)
    except ContinualError as err:
        # Task versions that record it are quarantined by _check_version; the shared version itself stays.
        report.problems.append(Problem(where, str(err), None))


def _check_profile(registry: "AdapterRegistry", model, report: VerifyReport) -> None:
    from registry.profile_index import ARTIFACT_DIR, LEGACY_ARTIFACT_DIR, VECTORS_FILE

    run_id = model.tags.get(T.PROFILE_RUN) or model.tags.get(T.LEGACY_PROFILE_RUN)
    if not run_id:
        return
    folder = ARTIFACT_DIR if T.PROFILE_RUN in model.tags else LEGACY_ARTIFACT_DIR
    try:
        path = Path(registry.store.download(registry.store.artifact_uri(run_id, folder), _tmpdir()))
        present = (path / VECTORS_FILE).is_file()
    except Exception as err:  # noqa: BLE001 - any failure to fetch it is the finding, reported in words
        present, path = False, f"run {run_id} ({type(err).__name__})"
    if not present:
        report.problems.append(Problem(f"task '{model.name}'", f"its stored profile ({path}) is missing; routing and "
                                       f"related-task search cannot use it (register the task again)", None))


def _check_index(registry: "AdapterRegistry", report: VerifyReport, repair: bool) -> None:
    try:
        wrong = registry.index.check()
    except Exception as err:  # noqa: BLE001 - reported, and --repair rebuilds it
        wrong = f"unreadable ({type(err).__name__}: {err})"
    if wrong is None:
        return
    problem = Problem("task index", f"{registry.index.cache_dir} is {wrong}", "rebuild it from the registry")
    if repair:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with registry.store.lock("index"):
                registry.index.rebuild()
        problem.repaired = registry.index.check() is None
    report.problems.append(problem)
