"""The `adapter/` folder of a version: safetensors weights, config JSON, label map, checksums.

    adapter/
      adapter_config.json       kind, kind settings, base model id + fingerprint, labels, pooling
      adapter_model.safetensors per-task weights ("adapter.*") and the task head ("head.*")
      shared_model.safetensors  the shared part this task was trained with (shared kinds only)
      base_layers.safetensors   base-model layers it trained (progressive unfreezing only)
      labels.json               class id -> label
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from modeling.kinds import KindConfig, get_kind
from modeling.model import AdapterModel
from tasks.errors import ContinualError

FORMAT_VERSION = 1
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
SHARED_FILE = "shared_model.safetensors"
BASE_LAYERS_FILE = "base_layers.safetensors"  # base layers the adapter trained (progressive unfreezing)
LABELS_FILE = "labels.json"


class ArtifactError(ContinualError):
    pass


@dataclass
class AdapterManifest:
    task: str
    kind: str
    kind_config: dict[str, Any]
    labels: list[str]
    base_model_id: str
    base_model_fingerprint: str
    max_length: int = 128
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "task": self.task,
            "kind": self.kind,
            "kind_config": self.kind_config,
            "labels": self.labels,
            "base_model": {"id": self.base_model_id, "fingerprint": self.base_model_fingerprint},
            "pooling": "mean",
            "max_length": self.max_length,
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "AdapterManifest":
        if data.get("format") != FORMAT_VERSION:
            raise ArtifactError(
                f"adapter format {data.get('format')!r} is not supported by this version (expects "
                f"{FORMAT_VERSION}); upgrade continual-adapters"
            )
        return cls(
            task=data["task"], kind=data["kind"], kind_config=data["kind_config"], labels=list(data["labels"]),
            base_model_id=data["base_model"]["id"], base_model_fingerprint=data["base_model"]["fingerprint"],
            max_length=int(data.get("max_length", 128)), extra=dict(data.get("extra", {})),
        )

    def kind_config_obj(self) -> KindConfig:
        return get_kind(self.kind).config_cls.from_dict(self.kind_config)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_adapter_dir(out_dir: str | Path, model: AdapterModel, slot: str, config: AdapterManifest) -> dict[str, str]:
    """Write the adapter folder for `slot`; returns {file name: sha256} of the weight files."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    kind = get_kind(config.kind)
    tensors = {f"adapter.{k}": v for k, v in kind.slot_state_dict(model, slot).items()}
    tensors.update({f"head.{k}": v for k, v in model.heads[slot].state_dict().items()})
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(out / WEIGHTS_FILE))
    files = [WEIGHTS_FILE]
    base_state = model.slots[slot].base_state
    if base_state:
        save_file({k: v.detach().contiguous().cpu() for k, v in base_state.items()}, str(out / BASE_LAYERS_FILE))
        files.append(BASE_LAYERS_FILE)
    shared = kind.shared_state_dict(model, slot)
    if shared:
        save_file({k: v.detach().contiguous().cpu() for k, v in shared.items()}, str(out / SHARED_FILE))
        files.append(SHARED_FILE)
    (out / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2))
    (out / LABELS_FILE).write_text(json.dumps({str(i): label for i, label in enumerate(config.labels)}, indent=2))
    return {name: sha256_file(out / name) for name in files}


def read_manifest(adapter_dir: str | Path) -> AdapterManifest:
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.exists():
        raise ArtifactError(f"'{path}' is missing: the adapter folder is incomplete; re-train the task")
    return AdapterManifest.from_json(json.loads(path.read_text()))


def verify_checksums(adapter_dir: str | Path, expected: dict[str, str], what: str) -> None:
    for name, sha in expected.items():
        path = Path(adapter_dir) / name
        if not path.exists():
            raise ArtifactError(f"{what}: weight file '{name}' is missing from {adapter_dir}; re-train the task")
        actual = sha256_file(path)
        if actual != sha:
            raise ArtifactError(
                f"{what}: '{name}' has sha256 {actual[:12]}… but the registry recorded {sha[:12]}…; "
                f"the file was changed or corrupted, re-train or restore it"
            )


def load_adapter_into(model: AdapterModel, slot: str, adapter_dir: str | Path,
                      shared_state: dict[str, torch.Tensor] | None = None,
                      config: AdapterManifest | None = None) -> AdapterManifest:
    """Add `slot` to `model` with the weights in `adapter_dir` (and a shared part, if given)."""
    from safetensors.torch import load_file

    adapter_dir = Path(adapter_dir)
    config = config or read_manifest(adapter_dir)
    kind_config = config.kind_config_obj()
    model.add_slot(slot, config.kind, kind_config, tuple(config.labels))
    kind = get_kind(config.kind)
    tensors = load_file(str(adapter_dir / WEIGHTS_FILE))
    if shared_state is None and (adapter_dir / SHARED_FILE).exists():
        shared_state = load_file(str(adapter_dir / SHARED_FILE))
    if shared_state:
        kind.load_shared_state(model, slot, shared_state)
    kind.load_slot_state(model, slot, {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
    if (adapter_dir / BASE_LAYERS_FILE).exists():
        from modeling.base_layers import load_unfrozen_base_state

        state = load_file(str(adapter_dir / BASE_LAYERS_FILE))
        load_unfrozen_base_state(model, state)
        model.slots[slot].base_state = state
    model.heads[slot].load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    return config
