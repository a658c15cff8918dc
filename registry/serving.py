"""Adapter versions as MLflow pyfunc models, so `mlflow models serve -m models:/<task>@<alias>` serves them.

This is the second of the two modules that import mlflow (with `registry/store.py`): the pyfunc
flavour is mlflow's own format, written into the version's `adapter/` folder at registration, so the
registered version *is* a pyfunc model, with no copy of the weights beside it.  The `MLmodel` file
names this module as the `loader_module` (mlflow's custom-flavour mechanism, as its built-in flavours
do): `mlflow.pyfunc.load_model` calls `_load_pyfunc(folder)`, which loads the base model once per
process and the adapter as a slot of the shared host, exactly like `AdapterRegistry.load`.

    mlflow models serve -m "models:/agnews@production" --env-manager local --port 5001
    curl -d '{"dataframe_records": [{"text": "Oil prices jump"}]}' -H 'Content-Type: application/json' \
        http://127.0.0.1:5001/invocations
    # {"predictions": [{"label": "business", "score": 0.91}]}
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from modeling.base_model import load_base_model
from modeling.manifest import BASE_LAYERS_FILE, SHARED_FILE, AdapterManifest, load_adapter_into, read_manifest, \
    verify_checksums
from modeling.predictor import Predictor, ensure_loaded, host_for, private_host
from tasks.errors import ContinualError

MLMODEL_FILE = "MLmodel"
CHECKSUMS_KEY = "continual.sha256"  # MLmodel metadata: the weight files' sha256, verified when served
TEXT_COLUMN = "text"


class ServingError(ContinualError):
    pass


def write_pyfunc_flavor(adapter_dir: str | Path, manifest: AdapterManifest, checksums: dict[str, str]) -> None:
    """Make `adapter_dir` a pyfunc model: an `MLmodel` file whose loader is this module."""
    import mlflow.pyfunc
    from mlflow.models import Model, ModelSignature
    from mlflow.types import ColSpec, Schema

    model = Model(
        signature=ModelSignature(inputs=Schema([ColSpec("string", TEXT_COLUMN)]),
                                 outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")])),
        metadata={CHECKSUMS_KEY: dict(checksums), "continual.task": manifest.task, "continual.kind": manifest.kind},
    )
    mlflow.pyfunc.add_to_model(model, loader_module=__name__, data=".")
    model.save(str(Path(adapter_dir) / MLMODEL_FILE))


class AdapterPyfunc:
    """What `mlflow.pyfunc.load_model` returns for a version: `predict` on a DataFrame with a `text`
    column (or a list of texts) -> a DataFrame of `label` and `score`."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def predict(self, model_input: Any, params: dict[str, Any] | None = None):
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if TEXT_COLUMN not in model_input.columns:
                raise ServingError(f"input has columns {list(model_input.columns)}; send a '{TEXT_COLUMN}' column, "
                                   f'e.g. {{"dataframe_records": [{{"text": "Oil prices jump"}}]}}')
            texts = [str(t) for t in model_input[TEXT_COLUMN]]
        elif isinstance(model_input, str):
            texts = [model_input]
        else:
            texts = [str(t) for t in model_input]
        batch_size = int((params or {}).get("batch_size", 32))
        predictions = self.predictor.predict(texts, batch_size=batch_size)
        return pd.DataFrame({"label": [p.label for p in predictions], "score": [p.score for p in predictions]})


def _load_pyfunc(data_path: str, model_config: dict | None = None) -> AdapterPyfunc:
    """mlflow's loader hook: the version folder (`data_path`) -> a predictor on the shared base model."""
    folder = Path(data_path)
    manifest = read_manifest(folder)
    if manifest.kind_config.get("share_group") is not None and not (folder / SHARED_FILE).exists():
        raise ServingError(f"'{manifest.kind}' adapter of {manifest.task} needs its shared part, which is a "
                           f"registered model of its own; serve it with AdapterRegistry.load instead")
    from mlflow.models import Model

    checksums = (Model.load(str(folder / MLMODEL_FILE)).metadata or {}).get(CHECKSUMS_KEY, {})
    verify_checksums(folder, checksums, f"served adapter {manifest.task}")
    base = load_base_model(manifest.base_model_id)
    if base.fingerprint != manifest.base_model_fingerprint:
        raise ServingError(f"adapter {manifest.task} was trained on base model '{manifest.base_model_id}' "
                           f"with another fingerprint; serve it where that exact base model is installed")
    slot = f"{manifest.task}__served__{hashlib.sha256(str(folder.resolve()).encode()).hexdigest()[:10]}"
    host = private_host(base, slot) if (folder / BASE_LAYERS_FILE).exists() else host_for(base)

    def loader() -> None:
        load_adapter_into(host, slot, folder, config=manifest)

    ensure_loaded([(host, slot, loader)])
    return AdapterPyfunc(Predictor(host, slot, base, manifest, manifest.task, 0, loader=loader))
