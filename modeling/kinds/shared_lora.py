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

from modeling.kinds.base import KindConfig, KindError, SharedPartSettings
from modeling.kinds.hooks import copy_checked, find_target_modules, io_features, meta_encoder, site_key
from modeling.kinds.lora import LoraKindConfig, default_lora_targets
from modeling.kinds.shared import SharedPartKind, SharedPartLayers

if TYPE_CHECKING:
    from modeling.model import AdapterModel


@dataclasses.dataclass
class SharedLoraConfig(SharedPartSettings, LoraKindConfig):
    """LoRA's settings (r, lora_alpha, lora_dropout, target_modules: validated by LoraKindConfig) plus
    share_group / train_shared: the group's tasks share one factor per targeted layer."""

    # The shared factor stays as drawn, a random projection no task trains, not even the group's first
    # (LoRA-FA's frozen A; train_shared is then moot): every task trains only its own factor, so earlier
    # tasks stay bit-identical and the group's first version is its only one.
    freeze_shared: bool = False


class SharedLoraLayers(SharedPartLayers):
    """adapter_modules[kind]: `shared[group]` ParameterDict(site key -> shared factor), per-task factors per slot."""

    def __init__(self, shared_factor: str):
        super().__init__()
        self.shared_factor = shared_factor  # "B" (shared-b-lora) or "A" (shared-a-lora)
        self.per_task = nn.ModuleDict()  # slot -> ParameterDict(site key -> per-task factor)
        self.dropout = nn.ModuleDict()  # slot -> Dropout on the branch input

    def trains_shared(self, slot: str) -> bool:
        """As for every shared part, except that with freeze_shared no slot trains it, not even its maker."""
        return not self.slot_config[slot].freeze_shared and super().trains_shared(slot)

    def factors(self, slot: str, key: str) -> tuple[nn.Parameter, nn.Parameter]:
        """(A (r, d_in), B (d_out, r)) that `slot` uses at site `key`."""
        own, shared = self.per_task[slot][key], self.shared[self.group_of(slot)][key]
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


class SharedLoraKind(SharedPartKind):
    config_cls = SharedLoraConfig
    shared_factor = "B"
    name = "shared-b-lora"
    # With B frozen a later task trains only A_i, whose every update lands in B's r columns: with a random head
    # a 5-class task can collapse to one class (order-1 dev, seed 1: amazon 18.0).  LP-FT starts the head as a
    # linear probe (order-1 dev, 3 seeds: ACC 62.1 with a random head, 63.7 probe-started, the seeds moving
    # +0.2, +6.6 and -2.2; per-task LoRA 63.6).
    default_head_init = "probe"
    group_fields = ("r", "target_modules")  # the shared factor's shapes

    # Names in saved state dicts follow peft: lora_A is (r, d_in), lora_B is (d_out, r).
    @property
    def own_name(self) -> str:
        return "lora_A" if self.shared_factor == "B" else "lora_B"

    @property
    def shared_name(self) -> str:
        return "lora_" + self.shared_factor

    def new_layers(self, model: "AdapterModel") -> SharedLoraLayers:
        return SharedLoraLayers(self.shared_factor)

    def _shapes(self, module: nn.Module, r: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(per-task factor shape, shared factor shape) for a targeted layer."""
        d_in, d_out = io_features(module)
        a, b = (r, d_in), (d_out, r)
        return (a, b) if self.shared_factor == "B" else (b, a)

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, SharedLoraConfig)
        # Same defaults as the lora kind, so `--method lora` and `--method shared-b-lora` adapt the same layers.
        config.target_modules = default_lora_targets(config.target_modules, model.encoder.config.model_type)
        super().attach(model, slot, config)

    def make_shared(self, model: "AdapterModel", config: SharedPartSettings) -> nn.Module:
        assert isinstance(config, SharedLoraConfig)
        layers, shared = self.layers(model), nn.ParameterDict()
        for name, module in find_target_modules(model.encoder, config.target_modules):
            t = torch.empty(self._shapes(module, config.r)[1], device=module.weight.device, dtype=module.weight.dtype)
            nn.init.kaiming_uniform_(t, a=math.sqrt(5))  # see the module docstring
            shared[layers.hook_site(name, module)] = nn.Parameter(t)
        return shared

    def attach_own(self, model: "AdapterModel", slot: str, config: SharedPartSettings) -> None:
        assert isinstance(config, SharedLoraConfig)
        layers, own = self.layers(model), nn.ParameterDict()
        for name, module in find_target_modules(model.encoder, config.target_modules):
            shape = self._shapes(module, config.r)[0]
            own[site_key(name)] = nn.Parameter(torch.zeros(shape, device=module.weight.device, dtype=module.weight.dtype))
        layers.per_task[slot] = own
        layers.dropout[slot] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()

    def drop_own(self, layers: SharedPartLayers, slot: str) -> None:
        assert isinstance(layers, SharedLoraLayers)
        del layers.per_task[slot], layers.dropout[slot]

    def own_parameters(self, layers: SharedPartLayers, slot: str) -> list[nn.Parameter]:
        assert isinstance(layers, SharedLoraLayers)
        return list(layers.per_task[slot].values())

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        layers = self.layers(model)
        return {f"{layers.site_names[k]}.{self.own_name}": p.detach().clone() for k, p in layers.per_task[slot].items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        layers = self.layers(model)
        self._load(layers.per_task[slot], layers.site_names, self.own_name, state)

    def shared_parameters(self, model: "AdapterModel", slot: str) -> dict[str, nn.Parameter]:
        """The shared factor of `slot`'s group, by site key: the very Parameters other tasks use."""
        layers = self.layers(model)
        return dict(layers.shared[layers.group_of(slot)].items())

    def shared_state(self, layers: SharedPartLayers, group: str) -> dict[str, torch.Tensor]:
        return {f"{layers.site_names[k]}.{self.shared_name}": p.detach().clone() for k, p in layers.shared[group].items()}

    def load_shared(self, layers: SharedPartLayers, group: str, state: dict[str, torch.Tensor]) -> None:
        self._load(layers.shared[group], layers.site_names, self.shared_name, state)

    def _load(self, params: nn.ParameterDict, site_names: dict[str, str], suffix: str, state: dict) -> None:
        expected = {f"{site_names[k]}.{suffix}": k for k in params}
        if set(state) != set(expected):
            raise KindError(
                f"{self.name} weights do not fit this base model: missing {sorted(set(expected) - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - set(expected))[:3]}"
            )
        for name, key in expected.items():
            copy_checked(params[key], state[name], name, self.name)

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per targeted Linear (d_in -> d_out): r·d_in for shared-b (A_i), d_out·r for shared-a (B_i)."""
        return self._count(config, base_config, shared=False)

    def shared_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per targeted Linear: d_out·r for shared-b (B), r·d_in for shared-a (A); once per share group."""
        return self._count(config, base_config, shared=True)

    def _count(self, config: KindConfig, base_config: Any, shared: bool) -> int:
        assert isinstance(config, SharedLoraConfig)
        targets = default_lora_targets(config.target_modules, base_config.model_type)
        total = 0
        for _, module in find_target_modules(meta_encoder(base_config), targets):
            rows, cols = self._shapes(module, config.r)[1 if shared else 0]
            total += rows * cols
        return total


class SharedALoraKind(SharedLoraKind):
    name = "shared-a-lora"
    shared_factor = "A"
    # B_i, the output side, is per task here, as in LoRA: a random head, as for LoRA (order-1 dev, 3 seeds:
    # ACC 62.9 with a random head, 61.0 probe-started).
    default_head_init = "fresh"
