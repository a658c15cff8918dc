"""`AdapterRegistry`: tasks, adapter versions, aliases and loading by name, over an MLflow store."""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from modeling.base_model import load_base_model
from modeling.kinds import get_kind
from modeling.manifest import (
    BASE_LAYERS_FILE, CONFIG_FILE, SHARED_FILE, AdapterManifest, ArtifactError, load_adapter_into, read_manifest,
    sha256_file, verify_checksums, write_adapter_dir,
)
from modeling.predictor import Predictor, ensure_loaded, host_for, private_host
from registry import tags as T
from registry.faults import crash_point
from registry.profile_index import ProfileIndex
from registry.shared_parts import SharedPart, current_version, load_shared_part, shared_part_name
from registry.serving import MLMODEL_FILE, write_pyfunc_flavor
from registry.store import AlreadyExists, MlflowStore, Run
from retrieval.routing import Related, Route, RouteDiagnosis
from tasks.errors import ContinualError
from tasks.spec import TaskSpec, validate_task_name

if TYPE_CHECKING:
    from modeling.model import AdapterModel
    from modeling.predictor import Prediction


class RegistryError(ContinualError):
    pass


@dataclass
class AdapterVersion:
    task: str
    version: int
    kind: str
    run_id: str
    source: str
    aliases: list[str] = field(default_factory=list)
    tags: dict[str, str] = field(default_factory=dict)
    created: int = 0  # ms since epoch

    @property
    def ref(self) -> str:
        return f"{self.task}:{self.version}"

    @property
    def metrics(self) -> dict[str, float]:
        return {k[len(T.METRIC_PREFIX):]: float(v) for k, v in self.tags.items() if k.startswith(T.METRIC_PREFIX)}

    @property
    def checksums(self) -> dict[str, str]:
        return {k[len(T.SHA_PREFIX):]: v for k, v in self.tags.items() if k.startswith(T.SHA_PREFIX)}

    @property
    def experiment(self) -> str | None:
        """The experiment (sequence, bench) that registered this version, or None for a user's training."""
        return self.tags.get(T.EXPERIMENT_VERSION)


# MLflow refuses these alias names itself (with a raw error): 'latest' and version-like 'v1', 'V12'.
_RESERVED_ALIAS = re.compile(r"latest|[vV]\d+", re.IGNORECASE)
_ALIAS = re.compile(r"[A-Za-z0-9_-]{1,255}")
_ALIAS_RULE = "use letters, digits, '-' or '_' (not only digits, not 'latest' or v<N>, which MLflow reserves)"


def validate_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias) or alias.isdigit() or _RESERVED_ALIAS.fullmatch(alias):
        raise RegistryError(f"alias '{alias}' is not allowed; {_ALIAS_RULE}")
    return alias


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """'task' | 'task@alias' | 'task:3' -> (task, alias, version)."""
    if not isinstance(ref, str) or not ref.strip():
        raise RegistryError(f"adapter reference {ref!r} is empty; write TASK, TASK@ALIAS or TASK:N, e.g. agnews:3")
    if "@" in ref:
        task, alias = ref.split("@", 1)
        if not alias:
            raise RegistryError(f"'{ref}' has an empty alias; write TASK@ALIAS, e.g. agnews@production")
        if not _ALIAS.fullmatch(alias):
            raise RegistryError(f"'{ref}' has a bad alias '{alias}'; {_ALIAS_RULE}")
        _check_ref_task(ref, task)
        return task, alias, None
    if ":" in ref:
        task, version = ref.rsplit(":", 1)
        if not version.isdigit() or int(version) < 1:
            raise RegistryError(f"'{ref}' has a bad version '{version}'; write TASK:N with N >= 1, e.g. agnews:3")
        _check_ref_task(ref, task)
        return task, None, int(version)
    _check_ref_task(ref, ref)
    return ref, None, None


def _check_ref_task(ref: str, task: str) -> None:
    try:
        validate_task_name(task)
    except ContinualError as err:
        raise RegistryError(f"adapter reference '{ref}': {err}") from None


class AdapterRegistry:
    """Tasks and their adapter versions in an MLflow store (default ./continual-store)."""

    def __init__(self, store: str | os.PathLike | None = None, create: bool = True):
        """`create=False` refuses a local store that does not exist yet (a mistyped path) instead of starting an
        empty one there: for code that only reads, like the CLI's list, show, predict and route."""
        self.store = MlflowStore(store)
        if not create:
            self.store.require_existing()
        self._index: ProfileIndex | None = None

    @property
    def tracking_uri(self) -> str:
        return self.store.tracking_uri

    def __repr__(self) -> str:
        return f"AdapterRegistry({self.tracking_uri!r})"

    # -- tasks -------------------------------------------------------------------------------------
    def register_task(self, spec: TaskSpec, embed: bool = True) -> TaskSpec:
        """Register a task (its data already checked by `tasks.build_spec`).

        With `embed`, a fixed sample of its training inputs is encoded by the frozen base encoder
        and stored with it, for related-task search and routing (`related`, `route`).
        """
        validate_task_name(spec.name)
        self._refuse_taken(spec.name)
        extra_tags = {}
        profile_run = None
        if embed:
            from tasks.loaders import load_split

            vectors, label_vector = self.index.profile_task(load_split(spec, "train"), spec.labels)
            with self.run(f"register-{spec.name}", {T.RUN_TASK: spec.name}) as run:
                self.index.log_profile(run, vectors, label_vector)
            profile_run = extra_tags[T.PROFILE_RUN] = run.run_id
        tags = {
            **extra_tags,
            T.IS_TASK: "1",
            T.SPEC: json.dumps(spec.to_dict(), sort_keys=True),
            T.TASK_KIND: spec.kind,
            T.TASK_LABELS: json.dumps(list(spec.labels)),
            T.DATA_FINGERPRINT: spec.fingerprint,
        }
        try:
            crash_point("task.profiled")
            # The database's unique name decides a race between two registrations, not the check above.
            self.store.create_model(spec.name, tags, spec.description)
        except AlreadyExists:
            if profile_run is not None:
                self.store.delete_run(profile_run)  # the loser leaves no orphan run behind
            self._refuse_taken(spec.name, raced=True)
            raise
        except BaseException:  # interrupted (SIGTERM, Ctrl-C) or failed: no task, so no profile run either
            if profile_run is not None and self.store.get_model(spec.name) is None:
                self.store.delete_run(profile_run)
            raise
        return spec

    def _refuse_taken(self, name: str, raced: bool = False) -> None:
        existing = self.store.get_model(name)
        if existing is not None:
            what = "a task" if T.IS_TASK in existing.tags else "a shared part"
            when = " (by another process, while this one was registering it)" if raced else ""
            raise RegistryError(
                f"task name '{name}' is already registered as {what}{when}; choose another name "
                f"(see `continual tasks list`)"
            )

    # -- related tasks and routing ------------------------------------------------------------------
    @property
    def index(self) -> ProfileIndex:
        if self._index is None:
            self._index = ProfileIndex(self.store)
        return self._index

    def related(self, task: str, k: int = 3) -> list[Related]:
        """The `k` registered tasks most similar to `task`, best first (`Related(task, score)`)."""
        self.task(task)
        return self.index.related(task, k)

    def route(self, texts: Sequence[str] | str, k: int = 1) -> list[list[Route]]:
        """Per text, the `k` registered tasks whose inputs it resembles most (`Route(task, score)`), best first."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._need_routable_tasks()
        return self.index.route(texts, k)

    def diagnose_routes(self, texts: Sequence[str]) -> list[RouteDiagnosis]:
        """Per text, the chosen task, the runner-up and the margin between their scores."""
        self._need_routable_tasks()
        return self.index.diagnose(list(texts))

    def _need_routable_tasks(self) -> None:
        if not self.index.router().tasks:
            raise RegistryError(f"no task with an embedding is registered in {self.local_root or self.tracking_uri} "
                                f"yet; register one with `continual tasks register` (or pass the right --store)")

    def task(self, name: str) -> TaskSpec:
        model = self.store.get_model(name)
        if model is None or T.IS_TASK not in model.tags:
            known = ", ".join(t.name for t in self.tasks()) or "none yet"
            raise RegistryError(
                f"no task named '{name}' (registered: {known}); register it with "
                f"`continual tasks register {name} --train FILE`"
            )
        return TaskSpec.from_dict(json.loads(model.tags[T.SPEC]))

    def tasks(self) -> list[TaskSpec]:
        return sorted(
            (TaskSpec.from_dict(json.loads(m.tags[T.SPEC])) for m in self.store.list_models() if T.IS_TASK in m.tags),
            key=lambda s: s.name,
        )

    def set_task_tag(self, name: str, key: str, value: str) -> None:
        self.task(name)
        self.store.set_model_tag(name, key, value)

    def task_tags(self, name: str) -> dict[str, str]:
        self.task(name)
        return dict(self.store.get_model(name).tags)

    # -- versions -------------------------------------------------------------------------------------
    def _version(self, mv, aliases: dict[str, int]) -> AdapterVersion:
        version = int(mv.version)
        return AdapterVersion(
            task=mv.name, version=version, kind=mv.tags.get(T.ADAPTER_KIND, ""), run_id=mv.run_id or "",
            source=mv.source, aliases=sorted(a for a, v in aliases.items() if v == version),
            tags=dict(mv.tags), created=int(mv.creation_timestamp or 0),
        )

    def versions(self, task: str) -> list[AdapterVersion]:
        """Every adapter version of `task`, oldest first."""
        self.task(task)
        aliases = self.store.aliases(task)
        return [self._version(mv, aliases) for mv in self.store.versions(task)]

    def resolve(self, ref: str, include_experiments: bool = False) -> AdapterVersion:
        """'task' (newest), 'task@alias' or 'task:N' -> that version.

        "Newest" is the newest version a user trained: versions an experiment registered (a sequence, a
        bench) and versions `adapters verify --repair` quarantined are skipped unless `include_experiments`
        (quarantined ones always); name them by number or alias to use them.
        """
        task, alias, number = parse_ref(ref)
        versions = self.versions(task)
        if not versions:
            raise RegistryError(f"task '{task}' has no adapter version yet; train one with `continual train {task}`")
        if alias is not None:
            chosen = [v for v in versions if alias in v.aliases]
            if not chosen:
                known = sorted({a for v in versions for a in v.aliases}) or ["none"]
                raise RegistryError(
                    f"task '{task}' has no alias '{alias}' (aliases: {', '.join(known)}); set one with "
                    f"`continual adapters alias {task} {alias} VERSION`"
                )
            return chosen[0]
        if number is not None:
            chosen = [v for v in versions if v.version == number]
            if not chosen:
                raise RegistryError(
                    f"task '{task}' has no version {number} (versions: "
                    f"{', '.join(str(v.version) for v in versions)}); see `continual adapters versions {task}`"
                )
            return chosen[0]
        # newest: MLflow reserves the alias 'latest'
        served = [v for v in versions if T.QUARANTINED not in v.tags
                  and (include_experiments or T.EXPERIMENT_VERSION not in v.tags)]
        if not served:
            skipped = ", ".join(f"{v.ref} ({'quarantined' if T.QUARANTINED in v.tags else 'experiment ' + str(v.experiment)})"
                                for v in versions[-3:])
            raise RegistryError(
                f"task '{task}' has no version trained outside an experiment (newest: {skipped}); name one "
                f"explicitly ({versions[-1].ref}) or train one with `continual train {task}`"
            )
        return served[-1]

    def add_version(self, task: str, run_id: str, artifact_path: str, tags: dict[str, str],
                    description: str = "") -> AdapterVersion:
        """Register the `artifact_path` folder of training run `run_id` as a new version of `task`."""
        self.task(task)
        source = self.store.artifact_uri(run_id, artifact_path)
        mv = self.store.create_version(task, source, run_id, tags, description)
        return self._version(mv, {})

    def register_adapter(self, run: Run, model: "AdapterModel", slot: str, manifest: AdapterManifest,
                         tags: dict[str, str], description: str = "",
                         shared_from: "SharedPart | None" = None) -> AdapterVersion:
        """Write `slot`'s adapter folder into `run`'s artifacts and register it as a new version of
        `manifest.task`; a shared part (shared-B LoRA, task-embedding layers) becomes a version of its
        own registered model (`<kind>--<share group>`) that the task version records.

        Atomic: every file (config and label map included) is written, hashed, copied into the store and,
        for a local store, re-hashed there before the version is created, in one transaction holding
        every sha256.  A crash at any step leaves no version; at worst an unreferenced shared version,
        which `shared="current"` ignores and `continual adapters verify --repair` removes.  A version
        registered inside an experiment (tag `continual.sequence`) is marked as one, so "newest" skips it.
        `shared_from`: the shared part the slot started from; when training left it bit-identical, the
        version records it instead of registering a copy (registry/shared_parts.py).
        """
        tags = dict(tags)
        if T.SEQUENCE in tags:
            tags.setdefault(T.EXPERIMENT_VERSION, tags[T.SEQUENCE])
        with tempfile.TemporaryDirectory(prefix="continual-save-") as tmp:
            checksums = write_adapter_dir(Path(tmp) / "adapter", model, slot, manifest)
            crash_point("adapter.written")
            if SHARED_FILE in checksums:
                group = get_kind(manifest.kind).share_group_of(manifest.kind_config_obj())
                shared_name = shared_part_name(manifest.kind, group)
                shared_dir = Path(tmp) / "shared"
                shared_dir.mkdir()
                (Path(tmp) / "adapter" / SHARED_FILE).rename(shared_dir / SHARED_FILE)
                shared_sha = checksums.pop(SHARED_FILE)
                if shared_from is not None and shared_from.name == shared_name and shared_from.sha256 == shared_sha:
                    tags[T.SHARED_PART] = shared_from.ref  # unchanged (train_shared=false): the same version
                else:
                    shared_tags = {f"{T.SHA_PREFIX}{SHARED_FILE}": shared_sha, T.TRAINED_WITH_TASK: manifest.task,
                                   **({T.PARENT_SHARED: shared_from.ref} if shared_from is not None else {})}
                    self._log_checked(run, shared_dir, "shared", shared_tags, f"shared part of {manifest.task}")
                    crash_point("shared.logged")
                    number = self.add_shared_version(shared_name, run.run_id, "shared", shared_tags)
                    crash_point("shared.registered")
                    tags[T.SHARED_PART] = f"{shared_name}:{number}"
            # Servable as an MLflow pyfunc model (registry/serving.py); its MLmodel file is hashed like the rest.
            write_pyfunc_flavor(Path(tmp) / "adapter", manifest, checksums)
            checksums[MLMODEL_FILE] = sha256_file(Path(tmp) / "adapter" / MLMODEL_FILE)
            tags.update({f"{T.SHA_PREFIX}{name}": sha for name, sha in checksums.items()})
            self._log_checked(run, Path(tmp) / "adapter", "adapter", tags, f"adapter of {manifest.task}")
        crash_point("adapter.logged")
        version = self.add_version(manifest.task, run.run_id, "adapter", tags,
                                   description=description or f"{manifest.kind} adapter for {manifest.task}")
        crash_point("version.registered")
        return version

    def _log_checked(self, run: Run, folder: Path, artifact_path: str, tags: dict[str, str], what: str) -> None:
        """Copy `folder`'s files into the run's artifacts one by one and, in a local store, check that what
        landed there has the recorded sha256 (a full disk or a dying copy must not become a version)."""
        for i, file in enumerate(sorted(folder.iterdir())):
            if i:
                crash_point("adapter.file_logged")
            run.log_artifact(file, artifact_path)
        if self.store.artifact_root is not None:
            landed = Path(self.store.download(self.store.artifact_uri(run.run_id, artifact_path)))
            expected = {k[len(T.SHA_PREFIX):]: v for k, v in tags.items() if k.startswith(T.SHA_PREFIX)}
            verify_checksums(landed, expected, what, required=tuple(expected))

    # -- runs ---------------------------------------------------------------------------------------------
    @contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None, parent: Run | str | None = None) -> Iterator[Run]:
        """An MLflow run in the store's experiment: FINISHED when the block completes, KILLED when it is
        interrupted, FAILED on an error (re-raised)."""
        parent_id = parent.run_id if isinstance(parent, Run) else parent
        with self.store.run(name, tags, parent_id) as run:
            yield run

    def run_info(self, run_id: str):
        """The MLflow run (status, params, metrics, tags) of `run_id`."""
        return self.store.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list:
        return self.store.metric_history(run_id, key)

    def find_runs(self, filter_string: str = "", max_results: int = 1000) -> list:
        """Runs of the store's experiment matching an MLflow filter, e.g. "tags.`continual.sequence` = 'x'"."""
        return self.store.search_runs(filter_string, max_results)

    @property
    def local_root(self) -> Path | None:
        """The store's folder for a local store (None for an MLflow server)."""
        return Path(self.store.artifact_root).parent if self.store.artifact_root is not None else None

    # -- aliases ----------------------------------------------------------------------------------------
    def set_alias(self, task: str, alias: str, version: int) -> AdapterVersion:
        """Point `alias` at `version` (creating or moving it)."""
        validate_alias(alias)
        target = self.resolve(f"{task}:{version}")
        self.store.set_alias(task, alias, target.version)
        return self.resolve(f"{task}@{alias}")

    def delete_alias(self, task: str, alias: str) -> None:
        self.resolve(f"{task}@{alias}")  # clear error when it does not exist
        self.store.delete_alias(task, alias)

    # -- shared parts -------------------------------------------------------------------------------------
    def add_shared_version(self, name: str, run_id: str, artifact_path: str, tags: dict[str, str]) -> int:
        """Register a new version of the shared part `name` (e.g. 'shared-b-lora--default')."""
        existing = self.store.get_model(name)
        if existing is None:
            try:
                self.store.create_model(name, {T.IS_SHARED_PART: "1"}, "shared adapter part")
            except AlreadyExists:  # another process registered the group's first version a moment ago
                pass
            existing = self.store.get_model(name)
        if T.IS_SHARED_PART not in existing.tags:
            raise RegistryError(f"'{name}' is a task, not a shared part; rename the share group")
        source = self.store.artifact_uri(run_id, artifact_path)
        return int(self.store.create_version(name, source, run_id, tags).version)

    def shared_part(self, kind: str, group: str, version: int | None = None) -> "SharedPart | None":
        """The share group's shared part to start a training from: `version`, or the group's current one
        (the newest version a task records); None when the group has none yet."""
        name = shared_part_name(kind, group)
        number = version if version is not None else current_version(self, name)
        if number is None:
            return None
        return load_shared_part(self, name, number, f"share group '{group}' of {kind}")

    def shared_versions(self, name: str, committed: bool = False) -> list[int]:
        """Versions of shared part `name`, oldest first; with `committed`, only those some task version
        records (a crash between the two registrations leaves an unreferenced one, never to be used)."""
        if self.store.get_model(name) is None:
            return []
        numbers = [int(mv.version) for mv in self.store.versions(name)]
        if committed:
            used = self.shared_references().get(name, set())
            numbers = [n for n in numbers if n in used]
        return numbers

    def shared_references(self) -> dict[str, set[int]]:
        """shared part name -> the versions of it that task versions record."""
        refs: dict[str, set[int]] = {}
        for mv in self.store.all_versions():
            recorded = mv.tags.get(T.SHARED_PART)
            if recorded and ":" in recorded:
                name, number = recorded.rsplit(":", 1)
                if number.isdigit():
                    refs.setdefault(name, set()).add(int(number))
        return refs

    def verify(self, repair: bool = False):
        """Check the whole store (versions, files, checksums, shared parts, task index): a `VerifyReport`.
        With `repair`, fix what is safe (quarantine broken versions, drop orphan shared versions, rebuild
        the index); a good version is never deleted."""
        from registry.verify import verify_store

        return verify_store(self, repair=repair)

    # -- loading -------------------------------------------------------------------------------------------
    def local_adapter_dir(self, version: AdapterVersion) -> Path:
        return Path(self.store.download(version.source))

    def verified_adapter_dir(self, version: AdapterVersion) -> tuple[Path, AdapterManifest]:
        """The version's folder and config, after every file passed its recorded sha256 and the config
        agrees with the version's tags.  Nothing from the folder is used before this passes."""
        adapter_dir = self.local_adapter_dir(version)
        verify_checksums(adapter_dir, {k: v for k, v in version.checksums.items() if k != SHARED_FILE},
                         f"adapter {version.ref}")
        config = read_manifest(adapter_dir)
        for what, in_file, tagged in (("task", config.task, version.task), ("kind", config.kind, version.kind),
                                      ("base model", config.base_model_id, version.tags.get(T.BASE_MODEL_ID)),
                                      ("base fingerprint", config.base_model_fingerprint,
                                       version.tags.get(T.BASE_MODEL_FINGERPRINT))):
            if tagged is not None and in_file != tagged:
                raise ArtifactError(f"adapter {version.ref}: its {CONFIG_FILE} names {what} '{in_file}' but the "
                                    f"registry recorded '{tagged}'; the store is inconsistent, re-train the task")
        return adapter_dir, config

    def load(self, ref: str, shared: str = "recorded", precision: str = "auto",
             include_experiments: bool = False) -> Predictor:
        """A predictor for 'task', 'task@alias' or 'task:N'.

        The base model is loaded once per process and shared by every adapter on it.  For kinds with
        a shared part, `shared="recorded"` uses the version the adapter was trained with and
        `shared="current"` the newest one some task version records.  `precision`: "auto" (bf16 autocast
        where the hardware does bf16 natively, else fp32), "32" or "bf16".  Every file is checked against
        its recorded sha256 before anything in it is used; only safetensors are read.
        """
        if shared not in ("recorded", "current"):
            raise RegistryError(f"shared='{shared}' is not valid; use 'recorded' or 'current'")
        version = self.resolve(ref, include_experiments=include_experiments)
        adapter_dir, config = self.verified_adapter_dir(version)
        base = load_base_model(config.base_model_id)
        if base.fingerprint != config.base_model_fingerprint:
            raise RegistryError(
                f"adapter {version.ref} was trained on base model '{config.base_model_id}' with fingerprint "
                f"{config.base_model_fingerprint[:12]}…, but the base model in use has {base.fingerprint[:12]}…; "
                f"load it where that exact base model is installed, or re-train the task"
            )
        shared_state, slot_suffix = self._shared_state(version, config, shared)
        if base.causal_lm:  # trained on a decoder: answers as text (modeling.lm_predictor)
            return self._load_lm(version, adapter_dir, config, base, shared_state, slot_suffix, precision)
        # An adapter that trained base layers gets a private copy of the base; all others share one.
        # The slot names the exact artifact (two stores in one process can both hold "task:1").
        source_id = hashlib.sha256(version.source.encode()).hexdigest()[:10]
        slot = f"{version.task}__v{version.version}__{source_id}{slot_suffix}"
        host = private_host(base, slot) if (adapter_dir / BASE_LAYERS_FILE).exists() else host_for(base)
        if shared_state is not None:  # a group of its own per shared version (see AdapterKind)
            kind, kind_config = get_kind(config.kind), config.kind_config_obj()
            config.kind_config = kind.renamed_share_group(
                kind_config, f"{kind.share_group_of(kind_config)}{slot_suffix}").to_dict()

        def loader() -> None:  # called again if the slot was evicted (bounded loaded adapters)
            load_adapter_into(host, slot, adapter_dir, shared_state=shared_state, config=config)

        ensure_loaded([(host, slot, loader)])
        return Predictor(host, slot, base, config, version.task, version.version, precision=precision,
                         loader=loader)

    def export(self, ref: str, out_dir: str | os.PathLike, format: str = "peft") -> Path:
        """Write version `ref` into `out_dir` in a format other tools read (modeling/export.py)."""
        from modeling.export import check_format, check_target, export_adapter

        check_format(format)
        check_target(out_dir)
        version = self.resolve(ref)
        adapter_dir = self.local_adapter_dir(version)
        verify_checksums(adapter_dir, {k: v for k, v in version.checksums.items() if k != SHARED_FILE},
                         f"adapter {version.ref}")
        base = load_base_model(read_manifest(adapter_dir).base_model_id)
        return export_adapter(adapter_dir, out_dir, base, format, what=f"adapter {version.ref}")

    def predict_many(self, items: Sequence[tuple[str, str]], batch_size: int = 32,
                     precision: str = "auto") -> list["Prediction"]:
        """One prediction per (task reference, text): rows of different tasks share forward passes
        (registry/multi.py)."""
        from registry.multi import predict_many

        return predict_many(self, items, batch_size=batch_size, precision=precision)

    def _load_lm(self, version: AdapterVersion, adapter_dir: Path, config: AdapterManifest, base, shared_state,
                 slot_suffix: str, precision: str):
        from modeling.lm_predictor import LMPredictor, lm_host_for, recorded_format

        source_id = hashlib.sha256(version.source.encode()).hexdigest()[:10]
        slot = f"{version.task}__v{version.version}__{source_id}{slot_suffix}"
        host = lm_host_for(base)
        with host.lock:
            if slot not in host.slots:
                if shared_state is not None:
                    config.kind_config["share_group"] = f"{config.kind_config.get('share_group', 'default')}{slot_suffix}"
                fmt = recorded_format(config, f"adapter {version.ref}")  # read before loading: all or nothing
                load_adapter_into(host, slot, adapter_dir, shared_state=shared_state, config=config)
                if fmt is not None:  # lay text out exactly as training did
                    host.formats[slot] = fmt
                host.eval()
        return LMPredictor(host, slot, base, config, version.task, version.version, precision=precision)

    def _shared_state(self, version: AdapterVersion, config: AdapterManifest, shared: str):
        """(shared weights to use or None, slot suffix naming the shared version)."""
        recorded = version.tags.get(T.SHARED_PART)
        if not recorded:
            return None, ""
        name, number = recorded.rsplit(":", 1)
        number = int(number)
        if shared == "current":  # the newest version of THIS share group's lineage that a task records
            number = current_version(self, name) or number
        part = load_shared_part(self, name, number, f"adapter {version.ref}")
        # Suffix names the exact shared artifact, so versions (and stores) never share a group by accident.
        return part.state, f"__s{number}_{part.sha256[:8]}"
