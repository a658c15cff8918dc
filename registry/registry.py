"""`AdapterRegistry`: tasks, adapter versions, aliases and loading by name, over an MLflow store."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator, Sequence

from modeling.base_model import load_base_model
from modeling.manifest import (
    BASE_LAYERS_FILE, SHARED_FILE, AdapterManifest, load_adapter_into, read_manifest, verify_checksums, write_adapter_dir,
)
from modeling.predictor import Predictor, host_for, private_host
from registry import tags as T
from registry.profile_index import ProfileIndex
from registry.store import MlflowStore, Run
from retrieval.routing import Related, Route, RouteDiagnosis
from tasks.errors import ContinualError
from tasks.spec import TaskSpec, validate_task_name

if TYPE_CHECKING:
    from modeling.model import AdapterModel


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


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """'task' | 'task@alias' | 'task:3' -> (task, alias, version)."""
    if "@" in ref:
        task, alias = ref.split("@", 1)
        if not alias:
            raise RegistryError(f"'{ref}' has an empty alias; write TASK@ALIAS, e.g. agnews@production")
        return task, alias, None
    if ":" in ref:
        task, version = ref.rsplit(":", 1)
        if not version.isdigit() or int(version) < 1:
            raise RegistryError(f"'{ref}' has a bad version '{version}'; write TASK:N with N >= 1, e.g. agnews:3")
        return task, None, int(version)
    return ref, None, None


class AdapterRegistry:
    """Tasks and their adapter versions in an MLflow store (default ./continual-store)."""

    def __init__(self, store: str | os.PathLike | None = None):
        self.store = MlflowStore(store)
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
        existing = self.store.get_model(spec.name)
        if existing is not None:
            what = "a task" if T.IS_TASK in existing.tags else "a shared part"
            raise RegistryError(
                f"task name '{spec.name}' is already registered as {what}; choose another name "
                f"(see `continual tasks list`)"
            )
        extra_tags = {}
        if embed:
            from tasks.loaders import load_split

            vectors, label_vector = self.index.profile_task(load_split(spec, "train"), spec.labels)
            with self.run(f"register-{spec.name}", {T.RUN_TASK: spec.name}) as run:
                self.index.log_profile(run, vectors, label_vector)
            extra_tags[T.PROFILE_RUN] = run.run_id
        tags = {
            **extra_tags,
            T.IS_TASK: "1",
            T.SPEC: json.dumps(spec.to_dict(), sort_keys=True),
            T.TASK_KIND: spec.kind,
            T.TASK_LABELS: json.dumps(list(spec.labels)),
            T.DATA_FINGERPRINT: spec.fingerprint,
        }
        self.store.create_model(spec.name, tags, spec.description)
        return spec

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
        if not self.index.router().tasks:
            raise RegistryError("no task with an embedding is registered yet; register one with `continual tasks register`")
        return self.index.route(texts, k)

    def diagnose_routes(self, texts: Sequence[str]) -> list[RouteDiagnosis]:
        """Per text, the chosen task, the runner-up and the margin between their scores."""
        return self.index.diagnose(list(texts))

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

    def resolve(self, ref: str) -> AdapterVersion:
        """'task' (newest), 'task@alias' or 'task:N' -> that version."""
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
        return versions[-1]  # newest: MLflow reserves the alias 'latest'

    def add_version(self, task: str, run_id: str, artifact_path: str, tags: dict[str, str],
                    description: str = "") -> AdapterVersion:
        """Register the `artifact_path` folder of training run `run_id` as a new version of `task`."""
        self.task(task)
        source = self.store.artifact_uri(run_id, artifact_path)
        mv = self.store.create_version(task, source, run_id, tags, description)
        return self._version(mv, {})

    def register_adapter(self, run: Run, model: "AdapterModel", slot: str, manifest: AdapterManifest,
                         tags: dict[str, str], description: str = "") -> AdapterVersion:
        """Write `slot`'s adapter folder into `run`'s artifacts and register it as a new version of
        `manifest.task`; a shared part (shared-B LoRA, task-embedding layers) becomes a version of its
        own registered model (`<kind>--<share group>`) that the task version records."""
        tags = dict(tags)
        with tempfile.TemporaryDirectory(prefix="continual-save-") as tmp:
            checksums = write_adapter_dir(Path(tmp) / "adapter", model, slot, manifest)
            if SHARED_FILE in checksums:
                group = manifest.kind_config.get("share_group", "default")
                shared_name = f"{manifest.kind}--{group}"
                shared_dir = Path(tmp) / "shared"
                shared_dir.mkdir()
                (Path(tmp) / "adapter" / SHARED_FILE).rename(shared_dir / SHARED_FILE)
                run.log_artifacts(shared_dir, "shared")
                number = self.add_shared_version(shared_name, run.run_id, "shared", {
                    f"{T.SHA_PREFIX}{SHARED_FILE}": checksums.pop(SHARED_FILE), T.TRAINED_WITH_TASK: manifest.task})
                tags[T.SHARED_PART] = f"{shared_name}:{number}"
            run.log_artifacts(Path(tmp) / "adapter", "adapter")
            tags.update({f"{T.SHA_PREFIX}{name}": sha for name, sha in checksums.items()})
        return self.add_version(manifest.task, run.run_id, "adapter", tags,
                                description=description or f"{manifest.kind} adapter for {manifest.task}")

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
        if alias == "latest" or not alias.replace("-", "").replace("_", "").isalnum() or alias.isdigit():
            raise RegistryError(
                f"alias '{alias}' is not allowed; use letters, digits, '-' or '_' (not only digits, and "
                f"not 'latest', which MLflow reserves)"
            )
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
            self.store.create_model(name, {T.IS_SHARED_PART: "1"}, "shared adapter part")
        elif T.IS_SHARED_PART not in existing.tags:
            raise RegistryError(f"'{name}' is a task, not a shared part; rename the share group")
        source = self.store.artifact_uri(run_id, artifact_path)
        return int(self.store.create_version(name, source, run_id, tags).version)

    def shared_versions(self, name: str) -> list[int]:
        if self.store.get_model(name) is None:
            return []
        return [int(mv.version) for mv in self.store.versions(name)]

    # -- loading -------------------------------------------------------------------------------------------
    def local_adapter_dir(self, version: AdapterVersion) -> Path:
        return Path(self.store.download(version.source, tempfile.mkdtemp(prefix="continual-adapter-")))

    def load(self, ref: str, shared: str = "recorded", precision: str = "auto") -> Predictor:
        """A predictor for 'task', 'task@alias' or 'task:N'.

        The base model is loaded once per process and shared by every adapter on it.  For kinds with
        a shared part, `shared="recorded"` uses the version the adapter was trained with and
        `shared="current"` the newest one.  `precision`: "auto" (bf16 autocast where the hardware does
        bf16 natively, else fp32), "32" or "bf16".
        """
        if shared not in ("recorded", "current"):
            raise RegistryError(f"shared='{shared}' is not valid; use 'recorded' or 'current'")
        version = self.resolve(ref)
        adapter_dir = self.local_adapter_dir(version)
        verify_checksums(adapter_dir, {k: v for k, v in version.checksums.items() if k != SHARED_FILE},
                         f"adapter {version.ref}")
        config = read_manifest(adapter_dir)
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
        with host.lock:
            if slot not in host.slots:
                if shared_state is not None:
                    config.kind_config["share_group"] = f"{config.kind_config.get('share_group', 'default')}{slot_suffix}"
                load_adapter_into(host, slot, adapter_dir, shared_state=shared_state, config=config)
                host.eval()
        return Predictor(host, slot, base, config, version.task, version.version, precision=precision)

    def _load_lm(self, version: AdapterVersion, adapter_dir: Path, config: AdapterManifest, base, shared_state,
                 slot_suffix: str, precision: str):
        from modeling.lm_predictor import LMPredictor, lm_host_for, set_slot_format

        source_id = hashlib.sha256(version.source.encode()).hexdigest()[:10]
        slot = f"{version.task}__v{version.version}__{source_id}{slot_suffix}"
        host = lm_host_for(base)
        with host.lock:
            if slot not in host.slots:
                if shared_state is not None:
                    config.kind_config["share_group"] = f"{config.kind_config.get('share_group', 'default')}{slot_suffix}"
                load_adapter_into(host, slot, adapter_dir, shared_state=shared_state, config=config)
                set_slot_format(host, slot, config)
                host.eval()
        return LMPredictor(host, slot, base, config, version.task, version.version, precision=precision)

    def _shared_state(self, version: AdapterVersion, config: AdapterManifest, shared: str):
        """(shared weights to use or None, slot suffix naming the shared version)."""
        recorded = version.tags.get(T.SHARED_PART)
        if not recorded:
            return None, ""
        name, number = recorded.rsplit(":", 1)
        number = int(number)
        if shared == "current":
            number = max(self.shared_versions(name) or [number])
        mv = self.store.get_version(name, number)
        if mv is None:
            raise RegistryError(f"shared part {name}:{number} used by {version.ref} is missing from the store")
        from safetensors.torch import load_file

        folder = Path(self.store.download(mv.source, tempfile.mkdtemp(prefix="continual-shared-")))
        verify_checksums(folder, {k[len(T.SHA_PREFIX):]: v for k, v in mv.tags.items() if k.startswith(T.SHA_PREFIX)},
                         f"shared part {name}:{number}")
        # Suffix names the exact shared artifact, so versions (and stores) never share a group by accident.
        return load_file(str(folder / SHARED_FILE)), f"__s{number}_{hashlib.sha256(mv.source.encode()).hexdigest()[:8]}"
