"""The store's task index: task profiles kept with each task, and a FAISS router rebuilt from them.

At registration a fixed sample of the task's training inputs is encoded by the frozen default base
encoder (see retrieval.profiles for the measured choice of layer and rule) and stored as an
artifact of a registration run; the registered model's tags point to it.  The router (FAISS
indexes + a sidecar of names) is a cache: a folder in a local store, or under ~/.cache for a
server, rebuilt from the stored vectors: silently when it only lacks tasks registered since it was built
(every registration leaves it so), with a warning when it is missing, corrupt, or holds removed tasks or
replaced vectors.

Staleness is judged by content: the cache records, per task, the profile run its vectors came from
(an immutable artifact), so a task deleted and registered again with other data (a new profile run)
is rebuilt even though its name did not change.  Rebuilds run under a file lock, and every file is
written through a unique temporary name and renamed into place, so concurrent processes neither
crash each other nor read a half-written cache.
"""
from __future__ import annotations

import hashlib
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from modeling.base_model import DEFAULT_BASE_MODEL, load_base_model
from registry import tags as T
from retrieval.routing import Related, Route, RouteDiagnosis, RouterConfig, TaskRouter, TextRouter
from tasks.loaders import Example
from tasks.errors import ContinualWarning

if TYPE_CHECKING:
    from registry.store import MlflowStore, Run

LEGACY_ARTIFACT_DIR = "task_embedding"  # stores written before the router's vectors were called profiles
VECTORS_FILE = "vectors.npy"
LABEL_FILE = "label_vector.npy"
ARTIFACT_DIR = "task_profile"
SOURCES_KEY = "profiles"  # router.json "extra": task -> "<profile run id>/<folder>" it was built from


def example_text(example: Example) -> str:
    """What the router sees of an example: its text, and its pair text on a second line."""
    return example.text if example.text_pair is None else f"{example.text}\n{example.text_pair}"


class ProfileIndex:
    def __init__(self, store: "MlflowStore", encoder_id: str = DEFAULT_BASE_MODEL):
        self.store = store
        self.encoder_id = encoder_id
        self._router: TaskRouter | None = None  # in-memory copy of the current router

    # -- where the cache lives ----------------------------------------------------------------
    @property
    def cache_dir(self) -> Path:
        if self.store.artifact_root is not None:
            return Path(self.store.artifact_root).parent / "index"
        digest = hashlib.sha256(self.store.tracking_uri.encode()).hexdigest()[:16]
        return Path.home() / ".cache" / "continual-adapters" / digest / "index"

    def _encoder(self, router: TaskRouter) -> TextRouter:
        base = load_base_model(self.encoder_id)
        # The untouched copy of the base: adapters loaded for inference attach to `base.encoder` in place
        # (peft layers, hooks), and a slot left active there must never change a route or a stored profile.
        return TextRouter(router, base.frozen_reference(), base.tokenizer)

    def _empty_router(self) -> TaskRouter:
        base = load_base_model(self.encoder_id)
        from retrieval.profiles import default_routing_layer

        return TaskRouter(base.hidden_size, RouterConfig(layer=default_routing_layer(base.encoder.config.num_hidden_layers)))

    # -- registration --------------------------------------------------------------------------
    def profile_task(self, examples: Sequence[Example], labels: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        """(sample vectors, label vector) of a task: what is stored with it."""
        text_router = self._encoder(self._empty_router())
        return text_router.task_inputs([example_text(e) for e in examples], list(labels) or None)

    def log_profile(self, run: "Run", vectors: np.ndarray, label_vector: np.ndarray | None) -> None:
        with tempfile.TemporaryDirectory(prefix="continual-embed-") as tmp:
            folder = Path(tmp) / ARTIFACT_DIR
            folder.mkdir()
            np.save(folder / VECTORS_FILE, vectors.astype(np.float32))
            if label_vector is not None:
                np.save(folder / LABEL_FILE, np.asarray(label_vector, np.float32))
            run.log_artifacts(folder, ARTIFACT_DIR)

    def related_to_new(self, vectors: np.ndarray, label_vector: np.ndarray | None, k: int) -> list[Related]:
        """Registered tasks nearest to a task that is not registered yet."""
        router = self.router()
        if len(router) == 0:
            return []
        return router.related(router.profile_task(vectors, label_vector), k=k)

    # -- the router ----------------------------------------------------------------------------
    def _indexed_tasks(self) -> dict[str, str]:
        """task name -> 'run id/artifact folder' holding its vectors, for every task with a profile."""
        found = {}
        for m in self.store.list_models():
            if T.PROFILE_RUN in m.tags:
                found[m.name] = f"{m.tags[T.PROFILE_RUN]}/{ARTIFACT_DIR}"
            elif T.LEGACY_PROFILE_RUN in m.tags:
                found[m.name] = f"{m.tags[T.LEGACY_PROFILE_RUN]}/{LEGACY_ARTIFACT_DIR}"
        return found

    def router(self) -> TaskRouter:
        """The router over every registered task, from the cache when it is current."""
        expected = self._indexed_tasks()
        if self._router is not None and self._router.saved_extra.get(SOURCES_KEY) == expected:
            return self._router
        cached = self._load_cache()
        if cached is not None and cached.saved_extra.get(SOURCES_KEY) == expected:
            self._router = cached
            return cached
        with self.store.lock("index"):
            again = self._load_cache(quiet=True)  # another process may have rebuilt it while we waited
            if again is not None and again.saved_extra.get(SOURCES_KEY) == expected:
                self._router = again
                return again
            if cached is not None and not self.behind(cached, expected):
                warnings.warn(f"task index in {self.cache_dir} is stale: {self.staleness(cached, expected)}; "
                              f"rebuilding it from the registry", ContinualWarning, stacklevel=2)
            self._router = self.rebuild(expected)
        return self._router

    @staticmethod
    def behind(cached: TaskRouter, expected: dict[str, str]) -> bool:
        """The cache lacks only tasks registered since it was built, and holds the others' current vectors:
        how every registration (here or from another machine) leaves it, so it is refreshed without a
        warning.  Removed tasks or replaced vectors mean the store was changed outside the product."""
        held = cached.saved_extra.get(SOURCES_KEY)
        return isinstance(held, dict) and all(expected.get(task) == source for task, source in held.items())

    @staticmethod
    def staleness(cached: TaskRouter, expected: dict[str, str]) -> str:
        """What differs between a cached router and the registry, in words."""
        held = cached.saved_extra.get(SOURCES_KEY)
        if not isinstance(held, dict):
            return "it does not record which stored profiles it was built from"
        missing = sorted(set(expected) - set(held))
        extra = sorted(set(held) - set(expected))
        changed = sorted(t for t in set(held) & set(expected) if held[t] != expected[t])
        parts = ([f"missing {', '.join(missing)}"] if missing else []) + ([f"holds removed {', '.join(extra)}"]
                 if extra else []) + ([f"holds old vectors of {', '.join(changed)} (registered again)"] if changed else [])
        return "; ".join(parts) or "it disagrees with the registry"

    def check(self) -> str | None:
        """None when the cache on disk matches the registry's stored profiles or only lacks tasks registered
        since (the next query adds them), else what is wrong."""
        expected = self._indexed_tasks()
        if not (self.cache_dir / "router.json").exists():
            # No cache folder at all: never built yet (the first query builds it), not a fault.
            return "missing (router.json)" if expected and self.cache_dir.exists() else None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cached = self._load_cache(quiet=True)
            if cached is not None and caught:
                return f"corrupt ({caught[0].message})"
        if cached is None:
            return "unreadable"
        if not self.behind(cached, expected):  # equal to the registry, or only missing newer tasks
            return f"stale: {self.staleness(cached, expected)}"
        return None

    def _load_cache(self, quiet: bool = False) -> TaskRouter | None:
        if not (self.cache_dir / "router.json").exists():
            # A cache folder without its router was deleted or half-removed: say so.  No folder at all is a
            # store whose router was never built yet (first query after the first registration).
            if not quiet and self.cache_dir.exists() and self._indexed_tasks():
                warnings.warn(f"task index in {self.cache_dir} is missing; rebuilding it from the registry",
                              ContinualWarning, stacklevel=3)
            return None
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                router = TaskRouter.load(self.cache_dir)
            for w in caught:  # a corrupt FAISS file was rebuilt from router.npz: say so once
                warnings.warn(str(w.message), ContinualWarning, stacklevel=3)
            return router
        except (FileNotFoundError, ValueError, OSError) as err:
            if not quiet:
                warnings.warn(f"task index in {self.cache_dir} is unreadable ({err}); rebuilding it from the registry",
                              ContinualWarning, stacklevel=3)
            return None

    def rebuild(self, tasks: dict[str, str] | None = None) -> TaskRouter:
        tasks = self._indexed_tasks() if tasks is None else tasks
        router = self._empty_router()
        for name in sorted(tasks):
            run_id, artifact_dir = tasks[name].split("/", 1)
            folder = Path(self.store.download(self.store.artifact_uri(run_id, artifact_dir),
                                              tempfile.mkdtemp(prefix="continual-embed-")))
            label = np.load(folder / LABEL_FILE) if (folder / LABEL_FILE).exists() else None
            router.add_task(name, np.load(folder / VECTORS_FILE), label_vector=label)
        router.saved_extra = {SOURCES_KEY: dict(tasks)}
        if len(router):
            router.save(self.cache_dir, extra=router.saved_extra)
        return router

    # -- queries -------------------------------------------------------------------------------
    def related(self, task: str, k: int) -> list[Related]:
        router = self.router()
        return router.related(task, k=k) if task in router else []

    def route(self, texts: Sequence[str], k: int = 1) -> list[list[Route]]:
        return self._encoder(self.router()).routes(list(texts), k=k)

    def diagnose(self, texts: Sequence[str]) -> list[RouteDiagnosis]:
        router = self.router()
        return router.diagnose(self._encoder(router).encode(list(texts)))
