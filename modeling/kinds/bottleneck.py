"""Bottleneck adapters (Houlsby et al. 2019), per task: h <- h + W_up σ(W_down h), W_up zero-initialised.

Placement (Houlsby): after the attention-output and the FFN-output dense projections, before the
residual + LayerNorm of the base block.  The adapter runs as a forward hook on those projections
instead of replacing them (modeling/kinds/hooks.py), so the encoder keeps the structure peft
expects and LoRA can be injected into the same encoder.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import (
    ACTIVATIONS, HookedLayers, find_target_modules, io_features, load_prefixed, meta_encoder, resolve_sites, split_names,
)

if TYPE_CHECKING:
    from modeling.model import AdapterModel

# --- the per-task bottleneck adapter -------------------------------------------------------------


@dataclasses.dataclass
class BottleneckConfig(KindConfig):
    bottleneck: int = 64  # width m of the bottleneck: W_down (m x H), W_up (H x m)
    activation: str = "relu"  # σ between the projections: relu, gelu, tanh or silu
    # Modules whose output is adapted; None = the Houlsby sites of the architecture
    # (attention.output.dense and output.dense for BERT-like encoders).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bottleneck(self.bottleneck, self.activation)
        self.target_modules = split_names(self.target_modules)


def check_bottleneck(bottleneck: int, activation: str) -> None:
    """The checks of the settings bottleneck and task-embedding adapters share."""
    if bottleneck < 1:
        raise KindError(f"bottleneck={bottleneck} must be >= 1; set --set bottleneck=64 for example")
    if activation not in ACTIVATIONS:
        raise KindError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}; set --set activation=relu")


class Bottleneck(nn.Module):
    """x (..., H) -> W_up σ(W_down x) (..., H); zero W_up so a new adapter is the identity."""

    def __init__(self, hidden: int, bottleneck: int, activation: str):
        super().__init__()
        self.down = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(h)))


class BottleneckLayers(HookedLayers):
    """adapter_modules["adapter"]: slot -> site key -> Bottleneck; `active` picks the slot hooks use."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()  # slot -> ModuleDict(site key -> Bottleneck)

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        slot = self.active
        if slot is None or key not in self.adapters[slot]:
            return None
        return out + self.adapters[slot][key](out).to(out.dtype)  # (B, T, H)


class BottleneckAdapterKind(AdapterKind):
    name = "adapter"
    config_cls = BottleneckConfig

    def new_layers(self, model: "AdapterModel") -> BottleneckLayers:
        return BottleneckLayers()

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, BottleneckConfig)
        config.target_modules = resolve_sites(config.target_modules, model.encoder.config.model_type)
        targets = find_target_modules(model.encoder, config.target_modules)
        layers, sites = self.layers(model), nn.ModuleDict()
        for name, module in targets:
            _, d_out = io_features(module)
            bottleneck = Bottleneck(d_out, config.bottleneck, config.activation)
            sites[layers.hook_site(name, module)] = bottleneck.to(module.weight.device, module.weight.dtype)
        layers.adapters[slot] = sites

    def drop(self, model: "AdapterModel", slot: str) -> None:
        self.drop_from(model, self.layers(model).adapters, slot)

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        layers = self.layers(model)
        layers.active = slot if slot in layers.adapters else None

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        layers = self.layers(model)
        return {f"{layers.site_names[key]}.{k}": v.detach().clone()
                for key, mod in layers.adapters[slot].items() for k, v in mod.state_dict().items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        layers = self.layers(model)
        load_prefixed(layers.adapters[slot], layers.site_names, state, "adapter")

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return list(self.layers(model).adapters[slot].parameters())

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per site of output width H: W_down + b_down + W_up + b_up = 2·H·m + m + H."""
        assert isinstance(config, BottleneckConfig)
        m = config.bottleneck
        sites = find_target_modules(meta_encoder(base_config), resolve_sites(config.target_modules, base_config.model_type))
        return sum(2 * io_features(mod)[1] * m + m + io_features(mod)[1] for _, mod in sites)
