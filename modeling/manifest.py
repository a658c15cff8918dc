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
# A version loads only when the registry recorded a sha256 for each of these (and every other file it has).
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
# Files a loader would read if present: any of them in a folder without a recorded sha256 is refused.
LOADABLE_FILES = (CONFIG_FILE, WEIGHTS_FILE, SHARED_FILE, BASE_LAYERS_FILE, LABELS_FILE)


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
        if not isinstance(data, dict):
            raise ArtifactError(f"{CONFIG_FILE} holds {type(data).__name__}, not an object; re-train the task")
        if data.get("format") != FORMAT_VERSION:
            raise ArtifactError(
                f"adapter format {data.get('format')!r} is not supported by this version (expects "
                f"{FORMAT_VERSION}); upgrade continual-adapters"
            )
        try:
            return cls(
                task=data["task"], kind=data["kind"], kind_config=data["kind_config"], labels=list(data["labels"]),
                base_model_id=data["base_model"]["id"], base_model_fingerprint=data["base_model"]["fingerprint"],
                max_length=int(data.get("max_length", 128)), extra=dict(data.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ArtifactError(f"{CONFIG_FILE} lacks or mangles {err}; re-train the task") from None

    def kind_config_obj(self) -> KindConfig:
        return get_kind(self.kind).config_cls.from_dict(self.kind_config)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_adapter_dir(out_dir: str | Path, model: AdapterModel, slot: str, config: AdapterManifest) -> dict[str, str]:
    """Write the adapter folder for `slot`; returns {file name: sha256} of every file written (weights,
    config and label map: the config's label order and base model id decide what a prediction means)."""
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
    files += [CONFIG_FILE, LABELS_FILE]
    return {name: sha256_file(out / name) for name in files}


def read_manifest(adapter_dir: str | Path) -> AdapterManifest:
    """The adapter's config.  Only call it on a folder `verify_checksums` has passed: the base model id
    in it is handed to `from_pretrained`."""
    path = Path(adapter_dir) / CONFIG_FILE
    if not path.exists():
        raise ArtifactError(f"'{path}' is missing: the adapter folder is incomplete; re-train the task")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise ArtifactError(f"'{path}' is not valid JSON ({err}); re-train the task") from None
    return AdapterManifest.from_json(data)


def verify_checksums(adapter_dir: str | Path, expected: dict[str, str], what: str,
                     required: tuple[str, ...] = REQUIRED_FILES) -> None:
    """Refuse a folder unless every file in `required` has a recorded sha256, every recorded file is
    present with that sha256, and no file a loader would read is present without one."""
    folder = Path(adapter_dir)
    missing_sha = [name for name in required if name not in expected]
    if missing_sha:
        raise ArtifactError(
            f"{what}: the registry recorded no sha256 for {', '.join(missing_sha)}, so its files cannot be "
            f"verified and it is not loaded; re-train the task (versions registered now record every file)"
        )
    for name, sha in expected.items():
        path = folder / name
        if not path.is_file():
            raise ArtifactError(f"{what}: file '{name}' is missing from {folder}; restore it or re-train the task")
        actual = sha256_file(path)
        if actual != sha:
            raise ArtifactError(
                f"{what}: '{name}' has sha256 {actual[:12]}… but the registry recorded {sha[:12]}…; "
                f"the file was changed, truncated or corrupted, restore it or re-train the task"
            )
    unverified = sorted(name for name in LOADABLE_FILES if name not in expected and (folder / name).exists())
    if unverified:
        raise ArtifactError(f"{what}: '{unverified[0]}' is in {folder} but the registry recorded no sha256 for it; "
                            f"remove the file or re-train the task")


def load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """safetensors only, never pickle: a weight file cannot run code when it is read."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ArtifactError(f"'{path}' is not a readable safetensors file ({err}); restore it or re-train") from None


def load_adapter_into(model: AdapterModel, slot: str, adapter_dir: str | Path,
                      shared_state: dict[str, torch.Tensor] | None = None,
                      config: AdapterManifest | None = None) -> AdapterManifest:
    """Add `slot` to `model` with the weights in `adapter_dir` (and a shared part, if given).  All or
    nothing: if any file fails to load, the slot is removed again, so a host never keeps a half-loaded slot
    (a retry would otherwise find the slot present and serve its random initial weights)."""
    adapter_dir = Path(adapter_dir)
    config = config or read_manifest(adapter_dir)
    model.add_slot(slot, config.kind, config.kind_config_obj(), tuple(config.labels))
    try:
        _load_slot_files(model, slot, adapter_dir, shared_state, config)
    except BaseException:
        model.remove_slot(slot)
        raise
    return config


def _load_slot_files(model: AdapterModel, slot: str, adapter_dir: Path,
                     shared_state: dict[str, torch.Tensor] | None, config: AdapterManifest) -> None:
    kind = get_kind(config.kind)
    tensors = load_safetensors(adapter_dir / WEIGHTS_FILE)
    if shared_state is None and (adapter_dir / SHARED_FILE).exists():
        shared_state = load_safetensors(adapter_dir / SHARED_FILE)
    if shared_state:
        kind.load_shared_state(model, slot, shared_state)
    kind.load_slot_state(model, slot, {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
    if (adapter_dir / BASE_LAYERS_FILE).exists():
        from modeling.base_layers import load_unfrozen_base_state

        state = load_safetensors(adapter_dir / BASE_LAYERS_FILE)
        load_unfrozen_base_state(model, state)
        model.slots[slot].base_state = state
    model.heads[slot].load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
