"""Base-model layers that an adapter trained (progressive unfreezing): extract and restore them.

An adapter trained with unfrozen base layers is only valid together with those layers, so they are
saved beside it (`base_layers.safetensors`) and loaded into a private copy of the base at inference.
"""
from __future__ import annotations

import torch
from torch import nn

from tasks.errors import ContinualError


def _is_adapter(name: str) -> bool:
    return any(part.startswith("lora_") for part in name.split("."))  # peft LoRA injected into the encoder


def base_parameters(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The base model's own parameters in `module` (peft adapter weights injected into it excluded)."""
    return [(n, p) for n, p in module.named_parameters() if not _is_adapter(n)]


def _portable(name: str) -> str:
    return name.replace(".base_layer.", ".")  # the same key whether or not peft wrapped the Linear


def unfrozen_base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Base encoder weights that train (were unfrozen), keyed as in the plain encoder's state dict."""
    return {_portable(n): p.detach().clone() for n, p in base_parameters(model.encoder) if p.requires_grad}


def load_unfrozen_base_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Write weights saved by `unfrozen_base_state` into `model.encoder` (in place)."""
    params = {_portable(n): p for n, p in base_parameters(model.encoder)}
    unknown = sorted(set(state) - set(params))
    if unknown:
        raise ContinualError(
            f"unfrozen base weights {unknown[:3]} are not in this base model; load them on the base they were trained on"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)
