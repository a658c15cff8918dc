"""Write a registered adapter in a format other tools read: `peft` for LoRA versions.

A `lora` version's own folder uses peft's file names but not peft's format (its weights carry the
head too, under our key prefixes, and `adapter_config.json` is our manifest).  `export_adapter`
writes a genuine peft adapter folder instead, built by peft itself (`get_peft_model` +
`save_pretrained`), so `PeftModel.from_pretrained(base, folder)` loads it and LoRA servers (vLLM,
LoRAX, TGI) can serve it:

    adapter_config.json          peft's LoraConfig (base_model_name_or_path = the base model's path)
    adapter_model.safetensors    peft's keys ("base_model.model.<module>.lora_A.weight", ...)
    continual_adapter.json       the platform's manifest (task, labels, base fingerprint, max length)
    continual_head.safetensors   the task head (Linear over the mean-pooled encoder output)
"""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from modeling.base_model import BaseModel
from modeling.manifest import BASE_LAYERS_FILE, WEIGHTS_FILE, read_manifest
from tasks.errors import ContinualError

EXPORT_FORMATS = ("peft",)
MANIFEST_FILE = "continual_adapter.json"
HEAD_FILE = "continual_head.safetensors"


class ExportError(ContinualError):
    pass


def check_target(out_dir: str | Path) -> Path:
    """`out_dir` if it is absent or an empty folder; otherwise a one-line error (nothing is written)."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"target '{out}' already exists and is not an empty folder; choose a new folder "
                          f"or empty it first")
    return out


def check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"export format '{fmt}' is not supported; choose one of: {', '.join(EXPORT_FORMATS)}")


def export_adapter(adapter_dir: str | Path, out_dir: str | Path, base: BaseModel, fmt: str = "peft",
                   what: str = "adapter") -> Path:
    """Write the adapter in `adapter_dir` (a version's folder, checksums verified) to `out_dir` as `fmt`.

    Everything is written into a temporary folder beside `out_dir` and moved into place at the end, so
    a refusal or failure leaves nothing behind.
    """
    check_format(fmt)
    out = check_target(out_dir)
    adapter_dir = Path(adapter_dir)
    manifest = read_manifest(adapter_dir)
    if manifest.kind != "lora":
        raise ExportError(f"{what} is a '{manifest.kind}' adapter, which peft's LoRA format cannot express; "
                          f"only 'lora' versions export with --format peft")
    if (adapter_dir / BASE_LAYERS_FILE).exists():
        raise ExportError(f"{what} also trained base-model layers (progressive unfreezing), which a peft LoRA "
                          f"adapter cannot carry; export a version trained without --set unfreeze_schedule")
    from peft import get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    from modeling.kinds import get_kind

    tensors = load_file(str(adapter_dir / WEIGHTS_FILE))
    lora_state = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    head = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    config = get_kind("lora").peft_config(manifest.kind_config_obj())
    config.base_model_name_or_path = base.path
    peft_model = get_peft_model(base.fresh_encoder(), config)
    # Our keys are relative to the encoder, which is exactly the model peft wrapped.
    result = set_peft_model_state_dict(peft_model.base_model.model, lora_state, adapter_name="default")
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    if unexpected:
        raise ExportError(f"{what}: LoRA weights do not fit base model '{manifest.base_model_id}' "
                          f"(unexpected keys {unexpected[:3]})")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        peft_model.save_pretrained(str(tmp))
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest.to_json(), indent=2))
        save_file({k: v.contiguous() for k, v in head.items()}, str(tmp / HEAD_FILE))
        if out.exists():
            out.rmdir()  # empty (checked above)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
