"""The MLflow store behind the registry: the only module that imports mlflow.

A small set of verbs over `MlflowClient`: tasks are registered models, adapter versions are model
versions whose source is a training run's `adapter/` artifact folder, training runs live in one
experiment.  By default everything sits in one folder: `mlflow.db` (SQLite) plus `artifacts/`.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from registry import tags as T
from tasks.errors import ContinualError

DEFAULT_STORE = "./continual-store"
STORE_ENV = "CONTINUAL_STORE"


class StoreError(ContinualError):
    pass


def resolve_store(store: str | os.PathLike | None = None) -> tuple[str, str | None]:
    """(tracking URI, local artifact root or None when the server owns artifacts).

    Order: the argument, then $CONTINUAL_STORE, then ./continual-store.  A plain path is a folder
    holding mlflow.db and artifacts/; `sqlite:///file.db` keeps artifacts beside the file;
    `http(s)://` is an MLflow tracking server that stores artifacts itself.
    """
    value = str(store) if store is not None else os.environ.get(STORE_ENV) or DEFAULT_STORE
    if value.startswith(("http://", "https://")):
        return value.rstrip("/"), None
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

    # -- connection -------------------------------------------------------------------------
    @property
    def client(self):
        if self._client is None:
            logging.getLogger("mlflow").setLevel(logging.WARNING)
            logging.getLogger("alembic").setLevel(logging.WARNING)
            from mlflow import MlflowClient

            if self.artifact_root is not None:
                Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            exp = self.client.get_experiment_by_name(T.EXPERIMENT)
            if exp is not None:
                self._experiment_id = exp.experiment_id
                if exp.tags.get(T.EXPERIMENT_KIND) != T.MODEL_TRAINING:  # stores made before the tag existed
                    self.client.set_experiment_tag(exp.experiment_id, T.EXPERIMENT_KIND, T.MODEL_TRAINING)
            else:
                location = Path(self.artifact_root).as_uri() if self.artifact_root else None
                self._experiment_id = self.client.create_experiment(
                    T.EXPERIMENT, artifact_location=location, tags={T.EXPERIMENT_KIND: T.MODEL_TRAINING})
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
        self.client.create_registered_model(name, tags=tags, description=description or None)

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(name, key, value)

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
        run = self.client.create_run(self.experiment_id, run_name=name, tags=tags)
        return run.info.run_id

    @contextmanager
    def run(self, name: str, tags: dict[str, str] | None = None, parent_run_id: str | None = None) -> Iterator["Run"]:
        """A run that ends FINISHED when the block completes, KILLED when it is interrupted (Ctrl-C,
        SIGTERM) and FAILED on any other exception, which is re-raised."""
        run = Run(self, self.start_run(name, tags, parent_run_id))
        try:
            yield run
        except (KeyboardInterrupt, SystemExit):
            self.end_run(run.run_id, "KILLED")
            raise
        except BaseException:
            self.end_run(run.run_id, "FAILED")
            raise
        self.end_run(run.run_id, "FINISHED")

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifacts(self, run_id: str, local_dir: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifacts(run_id, str(local_dir), artifact_path)

    def log_artifact(self, run_id: str, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(local_file), artifact_path)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def artifact_uri(self, run_id: str, path: str) -> str:
        return f"{self.client.get_run(run_id).info.artifact_uri}/{path}"

    def get_run(self, run_id: str):
        return self.client.get_run(run_id)

    def metric_history(self, run_id: str, key: str) -> list:
        return self.client.get_metric_history(run_id, key)

    def search_runs(self, filter_string: str = "", max_results: int = 1000) -> list:
        return list(self.client.search_runs([self.experiment_id], filter_string, max_results=max_results))

    def download(self, artifact_uri: str, dst: str | Path | None = None) -> str:
        """Local path of an artifact folder (local stores are read in place; servers download)."""
        if artifact_uri.startswith("file://"):
            from urllib.parse import unquote, urlparse

            return unquote(urlparse(artifact_uri).path)
        from mlflow.artifacts import download_artifacts

        return download_artifacts(artifact_uri=artifact_uri, dst_path=str(dst) if dst else None,
                                  tracking_uri=self.tracking_uri)

    # -- versions and aliases ------------------------------------------------------------------
    def create_version(self, task: str, source: str, run_id: str, tags: dict[str, str], description: str = ""):
        return self.client.create_model_version(task, source, run_id=run_id, tags=tags,
                                                description=description or None)

    def versions(self, task: str) -> list:
        found = self.client.search_model_versions(f"name='{task}'", max_results=10000)
        return sorted(found, key=lambda v: int(v.version))

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
        self.client.set_registered_model_alias(task, alias, str(version))

    def delete_alias(self, task: str, alias: str) -> None:
        self.client.delete_registered_model_alias(task, alias)

    def set_version_tag(self, task: str, version: int, key: str, value: str) -> None:
        self.client.set_model_version_tag(task, str(version), key, value)


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
