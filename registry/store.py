"""The MLflow store behind the registry: the only module that imports mlflow.

A small set of verbs over `MlflowClient`: tasks are registered models, adapter versions are model
versions whose source is a training run's `adapter/` artifact folder, training runs live in one
experiment.  By default everything sits in one folder: `mlflow.db` (SQLite) plus `artifacts/`.
"""
from __future__ import annotations

import logging
import os
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from registry import tags as T
from registry.faults import crash_point
from tasks.errors import ContinualError, Interrupted

DEFAULT_STORE = "./continual-store"
STORE_ENV = "CONTINUAL_STORE"


class StoreError(ContinualError):
    pass


class AlreadyExists(StoreError):
    """A registered model of that name exists (another process may have created it a moment ago)."""


R = TypeVar("R")
WRITE_ATTEMPTS = 8  # SQLite answers "database is locked" to concurrent writers beyond its busy timeout


def _is_locked(err: Exception) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "temporarily_unavailable" in text


def with_retry(fn: Callable[[], R], what: str) -> R:
    """Run a store write, retrying with jittered exponential backoff while SQLite reports a lock.

    Only lock errors are retried: MLflow rolls the whole transaction back on them, so a retry can
    never write twice.  Any other error is raised at once.
    """
    from mlflow.exceptions import MlflowException

    for attempt in range(WRITE_ATTEMPTS):
        try:
            return fn()
        except MlflowException as err:
            if not _is_locked(err) or attempt == WRITE_ATTEMPTS - 1:
                if _is_locked(err):
                    raise StoreError(f"the store stayed locked by other writers while trying to {what}; "
                                     f"try again when fewer processes write to it") from None
                raise
            time.sleep(min(2.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


_DOWNLOADS: list[str] = []  # this process's download folders (servers only), removed at exit


def _download_dir() -> str:
    """A fresh temporary folder for one download from a tracking server, removed when the process exits
    (the adapter's weights are read into memory when it loads; nothing reads the folder later)."""
    import atexit
    import shutil
    import tempfile

    if not _DOWNLOADS:
        atexit.register(lambda: [shutil.rmtree(d, ignore_errors=True) for d in _DOWNLOADS])
    _DOWNLOADS.append(tempfile.mkdtemp(prefix="continual-adapter-"))
    return _DOWNLOADS[-1]


def filter_literal(value: str) -> str:
    """`value` quoted for an MLflow filter string (names may hold quotes: share-group names do)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise StoreError(f"name {value!r} holds both ' and \"; MLflow cannot search for it, rename it")


def resolve_store(store: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """(tracking URI, local artifact root or None when the server owns artifacts).

    Order: the argument, then $CONTINUAL_STORE, then ./continual-store.  A plain path is a folder
    holding mlflow.db and artifacts/; `sqlite:///file.db` keeps artifacts beside the file;
    `http(s)://` is an MLflow tracking server that stores artifacts itself.
    """
    value = str(store) if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE
    if value.startswith(("http://", "https://")):
        return value.rstrip("/"), None
    if value.startswith(("http:/", "https:/")):  # pathlib.Path("http://host") is "http:/host": not a folder
        raise StoreError(f"store '{value}' is a server URI that lost a '/' (was it passed through pathlib.Path?); "
                         f"give it as a string, e.g. {value.replace(':/', '://', 1)}")
    if value.startswith("sqlite:"):
        db = Path(value.removeprefix("sqlite:").lstrip("/"))
        db = Path("/" + str(db)) if value.startswith("sqlite:////") else db
        root = db.resolve().parent
        return f"sqlite:///{db.resolve()}", str(root / "artifacts")
    if "://" in value:
        raise StoreError(
            f"store '{value}' is not supported; give a folder path, a sqlite:///file.db URI or an "
            f"http(s):// MLflow tracking server"
        )
    root = Path(value).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise StoreError(f"store '{value}' is a file, not a folder; give a folder path for --store")
    return f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")


class MlflowStore:
    def __init__(self, store: str | os.PathLike | None = None):
        self.tracking_uri, self.artifact_root = resolve_store(store)
        self._client = None
        self._experiment_id: str | None = None

    def require_existing(self) -> None:
        """Refuse a local store that does not exist yet, so that code that only reads (list, show, predict,
        route, ...) never creates an empty store at a mistyped path and answers from it.  Nothing is created
        before the first use of `client`; a server is not checked."""
        if not self.tracking_uri.startswith("sqlite:///"):
            return
        db = Path(self.tracking_uri.removeprefix("sqlite:///"))
        if not db.is_file():
            where = db.parent if db.name == "mlflow.db" else db
            raise StoreError(f"no store at {where} (nothing is registered there); check --store or ${STORE_ENV}, "
                             f"or register a task first with `continual tasks register NAME --train FILE`")

    # -- connection -------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            # It logs every lock error with a traceback before raising it; `with_retry` handles those.
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
            from mlflow import MlflowClient

            if self.artifact_root is None:
                self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                return self._client
            Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            # The first client on a new database runs its schema migrations; two processes doing that at
            # once crash one of them, so the first touch of a local store happens under a file lock.
            with self.lock("db"):
                client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
                client.search_registered_models(max_results=1)
                self._client = client
        return self._client

    def lock(self, name: str, timeout: float = 600):
        """An inter-process lock (`filelock`) named `name` beside a local store, or in the user's cache
        for a server store."""
        from filelock import FileLock

        if self.artifact_root is not None:
            folder = Path(self.artifact_root).parent
        else:
            import hashlib

            folder = Path.home() / ".cache" / "continual-adapters" / hashlib.sha256(
                self.tracking_uri.encode()).hexdigest()[:16]
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(str(folder / f".{name}.lock"), timeout=timeout)

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(T.EXPERIMENT)
            if exp is not None:
                self._experiment_id = exp.experiment_id
                if exp.tags.get(T.EXPERIMENT_KIND) != T.MODEL_TRAINING:  # stores made before the tag existed
                    self.client.set_experiment_tag(exp.experiment_id, T.EXPERIMENT_KIND, T.MODEL_TRAINING)
            else:
                from mlflow.exceptions import MlflowException

                location = Path(self.artifact_root).as_uri() if self.artifact_root else None
                try:
                    self._experiment_id = with_retry(
                        lambda: self.client.create_experiment(
                            T.EXPERIMENT, artifact_location=location, tags={T.EXPERIMENT_KIND: T.MODEL_TRAINING}),
                        "create the experiment")
                except MlflowException as err:  # another process created it first
                    if "RESOURCE_ALREADY_EXISTS" not in str(err.error_code) and "already exists" not in str(err):
                        raise
                    self._experiment_id = self.client.get_experiment_by_name(T.EXPERIMENT).experiment_id
        return self._experiment_id

    # -- registered models (tasks and shared parts) ---------------------------------------------
    def get_model(self, name: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_registered_model(name)
        except MlflowException as err:
            if "RESOURCE_DOES_NOT_EXIST" in str(err.error_code):
                return None
            raise

    def create_model(self, name: str, tags: dict[str, str], description: str = "") -> None:
        """Create a registered model; `AlreadyExists` when the name is taken (check-then-create races
        end here, in the database's unique constraint, not in a raw MLflow error)."""
        from mlflow.exceptions import MlflowException

        try:
            with_retry(lambda: self.client.create_registered_model(name, tags=tags, description=description or None),
                       f"create '{name}'")
        except MlflowException as err:
            if "RESOURCE_ALREADY_EXISTS" in str(err.error_code) or "already exists" in str(err).lower():
                raise AlreadyExists(f"'{name}' already exists in the store") from None
            raise

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        with_retry(lambda: self.client.set_registered_model_tag(name, key, value), f"tag '{name}'")

    def list_models(self, tag_filter: str | None = None) -> list:
        models = []
        token = None
        while True:
            page = self.client.search_registered_models(filter_string=tag_filter, max_results=1000, page_token=token)
            models += list(page)
            token = page.token
            if not token:
                return models

    # -- runs -----------------------------------------------------------------------------------
    def start_run(self, name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> str:
        tags = dict(tags or {})
        if parent_run_id:
            tags[T.PARENT_RUN] = parent_run_id
        run = with_retry(lambda: self.client.create_run(self.experiment_id, run_name=name, tags=tags),
                         f"start run '{name}'")
        return run.info.run_id

    @contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> Iterator["Run"]:
        """A run that ends FINISHED when the block completes, KILLED when it is interrupted (Ctrl-C,
        SIGTERM) and FAILED on any other exception, which is re-raised."""
        run = Run(self, self.start_run(name, tags, parent_run_id))
        try:
            crash_point("run.started")
            yield run
        except (KeyboardInterrupt, SystemExit, Interrupted):
            self.end_run(run.run_id, "KILLED")
            raise
        except BaseException:
            self.end_run(run.run_id, "FAILED")
            raise
        self.end_run(run.run_id, "FINISHED")
        crash_point("run.ended")

    def delete_run(self, run_id: str) -> None:
        """Move a run to MLflow's deleted lifecycle (e.g. a registration that lost a race)."""
        with_retry(lambda: self.client.delete_run(run_id), f"delete run {run_id}")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            batch = items[i : i + 100]
            with_retry(lambda: self.client.log_batch(run_id, params=batch), "log params")

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        with_retry(lambda: self.client.log_batch(run_id, metrics=batch), "log metrics")
        crash_point("metrics.logged")

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        batch = [RunTag(k, str(v)) for k, v in tags.items()]
        with_retry(lambda: self.client.log_batch(run_id, tags=batch), "tag a run")

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        with_retry(lambda: self.client.set_terminated(run_id, status=status), f"end run {run_id}")

    def artifact_uri(self, run_id: str, path: str) -> str:
        return f"{self.client.get_run(run_id).info.artifact_uri}/{path}"

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)

    def search_runs(self, filter_string: str = "", max_results: int = 1000) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string, max_results=max_results))

    def download(self, artifact_uri: str, dst: str | Path | None = None) -> str:
        """Local path of an artifact folder (local stores are read in place; servers download, by default
        into a temporary folder removed when the process exits)."""
        if artifact_uri.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return unquote(urlparse(artifact_uri).path)
        from mlflow.artifacts import download_artifacts

        if dst is None:
            dst = _download_dir()
        return download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst), tracking_uri=self.tracking_uri)

    # -- versions and aliases ------------------------------------------------------------------
    def create_version(self, task: str, source: str, run_id: str, tags: dict[str, str], description: str = ""):
        """One new model version with all its tags, in one database transaction: it exists complete or not at all."""
        return with_retry(lambda: self.client.create_model_version(task, source, run_id=run_id, tags=tags,
                                                                   description=description or None),
                          f"register a version of '{task}'")

    def versions(self, task: str) -> list:
        found = self.client.search_model_versions(f"name={filter_literal(task)}", max_results=10000)
        return sorted(found, key=lambda v: int(v.version))

    def all_versions(self) -> list:
        """Every model version in the store (tasks and shared parts)."""
        found, token = [], None
        while True:
            page = self.client.search_model_versions(max_results=10000, page_token=token)
            found += list(page)
            token = page.token
            if not token:
                return found

    def delete_version(self, name: str, version: int) -> None:
        with_retry(lambda: self.client.delete_model_version(name, str(version)), f"delete {name}:{version}")

    def get_version(self, task: str, version: int):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(task, str(version))
        except MlflowException:
            return None

    def version_by_alias(self, task: str, alias: str):
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(task, alias)
        except MlflowException:
            return None

    def aliases(self, task: str) -> dict[str, int]:
        model = self.client.get_registered_model(task)
        return {alias: int(version) for alias, version in (model.aliases or {}).items()}

    def set_alias(self, task: str, alias: str, version: int) -> None:
        with_retry(lambda: self.client.set_registered_model_alias(task, alias, str(version)), f"set {task}@{alias}")

    def delete_alias(self, task: str, alias: str) -> None:
        with_retry(lambda: self.client.delete_registered_model_alias(task, alias), f"delete {task}@{alias}")

    def set_version_tag(self, task: str, version: int, key: str, value: str) -> None:
        with_retry(lambda: self.client.set_model_version_tag(task, str(version), key, value), f"tag {task}:{version}")

    def delete_version_tag(self, task: str, version: int, key: str) -> None:
        with_retry(lambda: self.client.delete_model_version_tag(task, str(version), key), f"untag {task}:{version}")


class Run:
    """One MLflow run, as the code that fills it sees it (`MlflowStore.run`, `AdapterRegistry.run`)."""

    def __init__(self, store: MlflowStore, run_id: str):
        self.store = store
        self.run_id = run_id

    @property
    def tracking_uri(self) -> str:
        return self.store.tracking_uri

    @property
    def experiment_name(self) -> str:
        return T.EXPERIMENT

    def log_params(self, params: dict[str, Any]) -> None:
        self.store.log_params(self.run_id, params)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self.store.log_metrics(self.run_id, metrics, step)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.store.set_tags(self.run_id, tags)

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.store.log_artifact(self.run_id, local_file, artifact_path)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.store.log_artifacts(self.run_id, local_dir, artifact_path)

    def artifact_uri(self, path: str) -> str:
        return self.store.artifact_uri(self.run_id, path)
