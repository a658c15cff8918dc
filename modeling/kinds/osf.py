"""Orthogonal Subspace Fine-tuning through peft (`peft.OSFConfig`, Nayak et al. 2025, "Sculpting Subspaces").

peft splits each targeted weight by SVD, W = U_high S_high V_highᵀ + U_low S_low V_lowᵀ, freezes the top
`effective_rank` singular directions ("high", preserved) and trains U_low, S_low and V_low with their
gradients projected orthogonal to U_high / V_high; the layer adds (U_low S_low V_low - its initial value)
to the frozen base output.  peft adapter name = slot, like `lora`; a peft OSF layer computes with one
adapter at a time, so slots cannot be stacked or tied.

`fold` merges a slot's update into the encoder's weights and removes its adapter: what peft's continual-
learning recipe does between tasks (merge, then wrap the updated weights again with a larger preserved
rank), used by the `osf` sequence method (continual/methods/osf.py).

Saved per slot: the trainable factors and the frozen SVD factors the update is measured against (peft's
own state dict keeps only the trainable ones and re-derives the rest by SVD, whose signs may differ on
other hardware).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import default_targets, meta_encoder, split_names
from modeling.kinds.lora import unwrap_peft_layers

if TYPE_CHECKING:
    from modeling.model import AdapterModel

# Every Linear of a transformer block.  peft's OSF defaults where it has them (decoders); BERT-like encoders
# have none there, and peft's fallback "all-linear" would also take the pooler, which mean pooling never uses.
ENCODER_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
FROZEN_PARTS = ("U_low_init", "S_low_init", "V_low_init", "U_high", "V_high")  # peft's buffers, `_osf_<part>`


@dataclasses.dataclass
class OsfConfig(KindConfig):
    # Preserved ("high") share of each targeted matrix's smaller dimension: its top singular directions stay
    # frozen, the rest trains (peft's float effective_rank; 0.5 is peft's default).
    effective_rank: float = 0.5
    # Module names to adapt; None: every Linear of each transformer block (peft's OSF defaults for decoders).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.effective_rank, (int, float)) or not 0 < self.effective_rank < 1:
            raise KindError(f"effective_rank={self.effective_rank!r} is invalid: must be a fraction in (0, 1) of "
                            f"each matrix's smaller dimension (--set effective_rank=0.5)")
        self.effective_rank = float(self.effective_rank)
        self.target_modules = split_names(self.target_modules)


def osf_targets(targets: list[str] | None, model_type: str) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_OSF_TARGET_MODULES_MAPPING as DEFAULTS

    defaults = {**{t: ENCODER_TARGETS for t in ("bert", "roberta", "xlm-roberta", "electra")}, **DEFAULTS}
    return default_targets(targets, model_type, defaults, "OSF target modules", "name1,name2")


def preserved_rank(fraction: float, min_dim: int) -> int:
    """peft's rule for a float effective_rank: int(min_dim * fraction) frozen directions."""
    return int(min_dim * fraction)


def _targeted(name: str, targets: list[str]) -> bool:
    """peft's suffix match: the module name is a target or ends with ".<target>"."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _tuner_layers(model: "AdapterModel") -> list:
    from peft.tuners.osf import OSFLayer

    return [m for m in model.encoder.modules() if isinstance(m, OSFLayer)]


def _named_layers(model: "AdapterModel", slot: str) -> list[tuple[str, Any]]:
    from peft.tuners.osf import OSFLayer

    return [(name, m) for name, m in model.encoder.named_modules()
            if isinstance(m, OSFLayer) and slot in m.osf_svd_params]


class OsfKind(AdapterKind):
    name = "osf-svd"
    config_cls = OsfConfig

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        from peft import OSFConfig, inject_adapter_in_model

        assert isinstance(config, OsfConfig)
        config.target_modules = osf_targets(config.target_modules, model.encoder.config.model_type)
        for name, module in model.encoder.named_modules():
            weight = getattr(module, "weight", None)  # an OSF layer (a slot already there) shows its base weight
            if _targeted(name, config.target_modules) and isinstance(weight, torch.Tensor) and weight.ndim == 2:
                if preserved_rank(config.effective_rank, min(weight.shape)) < 1:
                    raise KindError(f"effective_rank={config.effective_rank} preserves no direction of {name} "
                                    f"{tuple(weight.shape)}; raise it (--set effective_rank=0.5)")
        try:
            with warnings.catch_warnings():  # several adapters in one model is the point here
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                inject_adapter_in_model(OSFConfig(effective_rank=config.effective_rank,
                                                  target_modules=config.target_modules), model.encoder, adapter_name=slot)
        except ValueError as err:
            raise KindError(f"OSF: {str(err).splitlines()[0]}") from None

    def drop(self, model: "AdapterModel", slot: str) -> None:
        from peft.functional import delete_adapter
        from peft.tuners.osf import OSFLayer

        layers = [layer for _, layer in _named_layers(model, slot)]
        for layer in layers:  # off first: peft would otherwise switch another adapter on
            layer._active_adapter = [a for a in layer.active_adapters if a != slot]
        if layers:
            delete_adapter(model.encoder, slot, prefix="osf_", layer_cls=OSFLayer)
        self._forget_config(model, slot)
        unwrap_peft_layers(model.encoder, only_empty=True)

    @staticmethod
    def _forget_config(model: "AdapterModel", slot: str) -> None:
        peft_configs = getattr(model.encoder, "peft_config", None)  # inject_adapter_in_model records each slot there
        if isinstance(peft_configs, dict):
            peft_configs.pop(slot, None)
            if not peft_configs:
                del model.encoder.peft_config

    def fold(self, model: "AdapterModel", slot: str) -> None:
        """Merge `slot`'s update into the encoder's weights and remove its adapter (peft's merge, for one slot):
        the slot then computes with the plain, updated encoder.  Not undone by `drop`."""
        with torch.no_grad():
            for _, layer in _named_layers(model, slot):
                base = layer.get_base_layer()
                base.weight += layer.get_delta_weight(slot).to(base.weight.dtype)
        self.drop(model, slot)

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        for layer in _tuner_layers(model):
            # Set the private field: peft's set_adapter also flips requires_grad (the trainer's decision).
            layer._active_adapter = [slot] if slot in layer.osf_svd_params else []

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        state = {}
        for name, layer in _named_layers(model, slot):
            for part, p in layer.osf_svd_params[slot].items():
                state[f"{name}.{part}"] = p.detach().clone()
            for part in FROZEN_PARTS:
                buffers = getattr(layer, f"_osf_{part}")
                if slot in buffers:
                    state[f"{name}.{part}"] = buffers[slot].detach().clone()
        return state

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        mine = self.slot_state_dict(model, slot)
        if set(state) != set(mine):
            raise KindError(f"OSF weights do not fit this slot: {len(set(state) ^ set(mine))} key(s) differ, e.g. "
                            f"{sorted(set(state) ^ set(mine))[0]!r}; load them with the same target_modules")
        with torch.no_grad():
            for name, layer in _named_layers(model, slot):
                for part, p in layer.osf_svd_params[slot].items():
                    self._copy(p, state[f"{name}.{part}"], f"{name}.{part}")
                for part in FROZEN_PARTS:
                    buffers = getattr(layer, f"_osf_{part}")
                    if slot in buffers:
                        self._copy(buffers[slot], state[f"{name}.{part}"], f"{name}.{part}")

    @staticmethod
    def _copy(target: torch.Tensor, value: torch.Tensor, key: str) -> None:
        if target.shape != value.shape:
            raise KindError(f"OSF weight {key} has shape {tuple(value.shape)}, this slot {tuple(target.shape)}; "
                            f"load it with the effective_rank it was trained with")
        target.copy_(value)

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return [p for _, layer in _named_layers(model, slot) for p in layer.osf_svd_params[slot].values()]

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per targeted Linear (out x in, m = min): the trainable rank l = m - int(m * effective_rank) gives
        U_low (out x l), S_low (l) and V_low (l x in)."""
        assert isinstance(config, OsfConfig)
        targets = osf_targets(config.target_modules, base_config.model_type)
        total = 0
        for name, module in meta_encoder(base_config).named_modules():
            if isinstance(module, nn.Linear) and _targeted(name, targets):
                m = min(module.in_features, module.out_features)
                low = m - preserved_rank(config.effective_rank, m)
                total += low * (module.out_features + 1 + module.in_features)
        return total
