"""LoRA with one factor shared by all tasks of a share group and the other factor per task.

shared-b-lora: ΔW_i = (lora_alpha / r) · B_shared · A_i   B_shared (d_out x r), A_i (r x d_in)
shared-a-lora: ΔW_i = (lora_alpha / r) · B_i · A_shared   A_shared (r x d_in), B_i (d_out x r)
(HydraLoRA-style: one shared down-projection, one up-projection per task.)

The delta runs as a forward hook on every targeted Linear (output + delta) rather than replacing the
module, so peft LoRA can be injected into the same encoder and both kinds coexist.  The shared
factor is ONE Parameter per targeted layer per share group, held once like VeRA's shared matrices.

Initialisation: the shared factor is kaiming-uniform (the rule peft uses for lora_A, applied to the
shared factor's own fan-in) and every per-task factor is zero.  So each task, whenever it is added,
starts as the identity (ΔW_i = 0) AND gets a gradient at step 1 through the non-zero shared factor.
With shared B this is the swapped LoRA init (B random, A zero), and it matters: a task added after
B was trained (or loaded from the registry) and frozen still learns its A_i from step 1, and the rule
doesn't depend on whether load_shared_state runs before or after attach.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import (
    add_output_hook, check_share_group, copy_checked, find_target_modules, io_features, meta_encoder, site_key,
    split_names,
)
from modeling.kinds.lora import LoraKind, LoraKindConfig

if TYPE_CHECKING:
    from modeling.model import AdapterModel


@dataclasses.dataclass
class SharedLoraConfig(KindConfig):
    r: int = 8  # rank of the shared and the per-task factor
    lora_alpha: int = 16  # scaling numerator: delta = (lora_alpha / r) * B A
    lora_dropout: float = 0.1  # dropout on the branch input, as in peft LoRA
    target_modules: list[str] | None = None  # Linear names to adapt; None = peft's LoRA defaults (query/value for BERT)
    share_group: str = "default"  # tasks of one group share one factor per targeted layer
    # Keep training the shared factor with every new task (earlier tasks of the group may then forget);
    # False freezes it after the group's first task, which leaves earlier tasks bit-identical.
    train_shared: bool = True

    def __post_init__(self) -> None:
        if self.r < 1:
            raise KindError(f"r={self.r} must be >= 1; set --set r=8 for example")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise KindError(f"lora_dropout={self.lora_dropout} must be in [0, 1); set --set lora_dropout=0.1")
        check_share_group(self.share_group)
        self.target_modules = split_names(self.target_modules)


def resolve_targets(config: SharedLoraConfig, model_type: str) -> list[str]:
    # Same defaults as the lora kind, so `--method lora` and `--method shared-b-lora` adapt the same layers.
    return LoraKind().resolved_target_modules(LoraKindConfig(target_modules=config.target_modules), model_type)


class SharedLoraLayers(nn.Module):
    """adapter_modules[kind]: shared factors per group, per-task factors per slot, and the hook logic."""

    def __init__(self, shared_factor: str):
        super().__init__()
        self.shared_factor = shared_factor  # "B" (shared-b-lora) or "A" (shared-a-lora)
        self.shared = nn.ModuleDict()  # group -> ParameterDict(site key -> shared factor)
        self.per_task = nn.ModuleDict()  # slot -> ParameterDict(site key -> per-task factor)
        self.dropout = nn.ModuleDict()  # slot -> Dropout on the branch input
        self.slot_config: dict[str, SharedLoraConfig] = {}
        self.group_config: dict[str, SharedLoraConfig] = {}  # the settings the group's shared factor was made with
        # group -> the slot that created the group (its shared factor always trains with that first task);
        # None once the shared factor was loaded from elsewhere (it is then trained only if train_shared).
        self.group_first: dict[str, str | None] = {}
        self.site_names: dict[str, str] = {}  # site key -> dotted module name (state-dict keys)
        self.active: str | None = None

    def factors(self, slot: str, key: str) -> tuple[nn.Parameter, nn.Parameter]:
        """(A (r, d_in), B (d_out, r)) that `slot` uses at site `key`."""
        own, shared = self.per_task[slot][key], self.shared[self.slot_config[slot].share_group][key]
        return (own, shared) if self.shared_factor == "B" else (shared, own)

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        slot = self.active
        if slot is None or key not in self.per_task[slot]:
            return None
        A, B = self.factors(slot, key)
        config = self.slot_config[slot]
        # Same op order as peft's LoraLayer: lora_B(lora_A(dropout(x))) * scaling.
        z = F.linear(self.dropout[slot](x.to(A.dtype)), A)  # (..., r)
        return out + (F.linear(z, B) * (config.lora_alpha / config.r)).to(out.dtype)  # (..., d_out)


class SharedLoraKind(AdapterKind):
    config_cls = SharedLoraConfig
    shared_factor = "B"
    name = "shared-b-lora"

    # Names in saved state dicts follow peft: lora_A is (r, d_in), lora_B is (d_out, r).
    @property
    def own_name(self) -> str:
        return "lora_A" if self.shared_factor == "B" else "lora_B"

    @property
    def shared_name(self) -> str:
        return "lora_" + self.shared_factor

    def _layers(self, model: "AdapterModel") -> SharedLoraLayers:
        if self.name not in model.adapter_modules:
            model.adapter_modules[self.name] = SharedLoraLayers(self.shared_factor)
        return model.adapter_modules[self.name]  # type: ignore[return-value]

    def _shapes(self, module: nn.Module, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(per-task factor shape, shared factor shape) for a targeted layer."""
        d_in, d_out = io_features(module)
        a, b = (r, d_in), (d_out, r)
        return (a, b) if self.shared_factor == "B" else (b, a)

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, SharedLoraConfig)
        config.target_modules = resolve_targets(config, model.encoder.config.model_type)
        layers = self._layers(model)
        group = config.share_group
        known = layers.group_config.get(group)
        if known is not None:  # a shared factor exists: its shape settings are fixed
            for field in ("r", "target_modules"):
                if getattr(known, field) != getattr(config, field):
                    raise KindError(
                        f"{self.name} share group '{group}' has {field}={getattr(known, field)}, this task asks for "
                        f"{field}={getattr(config, field)}; use the group's value or another --set share_group=NAME"
                    )
        sites = find_target_modules(model.encoder, config.target_modules)
        if known is None:
            shared = nn.ParameterDict()
            for name, module in sites:
                t = torch.empty(self._shapes(module, config.r)[1], device=module.weight.device, dtype=module.weight.dtype)
                nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # see the module docstring
                shared[site_key(name)] = nn.Parameter(t)
            layers.shared[group] = shared
            layers.group_config[group] = dataclasses.replace(config)
            layers.group_first[group] = slot
        own = nn.ParameterDict()
        for name, module in sites:
            shape = self._shapes(module, config.r)[0]
            own[site_key(name)] = nn.Parameter(torch.zeros(shape, device=module.weight.device, dtype=module.weight.dtype))
            layers.site_names[site_key(name)] = name
            add_output_hook(layers, site_key(name), module)
        layers.per_task[slot] = own
        layers.dropout[slot] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        layers.slot_config[slot] = config

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        layers = self._layers(model)
        layers.active = slot if slot in layers.per_task else None

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        layers = self._layers(model)
        return {f"{layers.site_names[k]}.{self.own_name}": p.detach().clone() for k, p in layers.per_task[slot].items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        layers = self._layers(model)
        self._load(layers.per_task[slot], layers.site_names, self.own_name, state)

    def shared_parameters(self, model: "AdapterModel", slot: str) -> dict[str, nn.Parameter]:
        """The shared factor of `slot`'s group, by site key: the very Parameters other tasks use."""
        layers = self._layers(model)
        return dict(layers.shared[layers.slot_config[slot].share_group].items())

    def shared_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        layers = self._layers(model)
        return {f"{layers.site_names[k]}.{self.shared_name}": p.detach().clone()
                for k, p in self.shared_parameters(model, slot).items()}

    def load_shared_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        layers = self._layers(model)
        group = layers.slot_config[slot].share_group
        self._load(layers.shared[group], layers.site_names, self.shared_name, state)
        layers.group_first[group] = None  # a loaded shared factor was trained elsewhere

    def _load(self, params: nn.ParameterDict, site_names: dict[str, str], suffix: str, state: dict) -> None:
        expected = {f"{site_names[k]}.{suffix}": k for k in params}
        if set(state) != set(expected):
            raise KindError(
                f"{self.name} weights do not fit this base model: missing {sorted(set(expected) - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - set(expected))[:3]}"
            )
        for name, key in expected.items():
            copy_checked(params[key], state[name], name, self.name)

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        layers = self._layers(model)
        config = layers.slot_config[slot]
        params = list(layers.per_task[slot].values())
        if config.train_shared or layers.group_first.get(config.share_group) == slot:
            params += list(layers.shared[config.share_group].values())
        return params

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per targeted Linear (d_in -> d_out): r·d_in for shared-b (A_i), d_out·r for shared-a (B_i)."""
        return self._count(config, base_config, shared=False)

    def shared_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per targeted Linear: d_out·r for shared-b (B), r·d_in for shared-a (A); once per share group."""
        return self._count(config, base_config, shared=True)

    def _count(self, config: KindConfig, base_config: Any, shared: bool) -> int:
        assert isinstance(config, SharedLoraConfig)
        targets = resolve_targets(config, base_config.model_type)
        total = 0
        for _, module in find_target_modules(meta_encoder(base_config), targets):
            rows, cols = self._shapes(module, config.r)[1 if shared else 0]
            total += rows * cols
        return total

    def drop(self, model: "AdapterModel", slot: str) -> None:
        # The group's shared factor stays: other (or later) tasks of the group still need it.
        layers = self._layers(model)
        del layers.per_task[slot], layers.dropout[slot]
        layers.slot_config.pop(slot)
        if layers.active == slot:
            layers.active = None


class SharedALoraKind(SharedLoraKind):
    name = "shared-a-lora"
    shared_factor = "A"
