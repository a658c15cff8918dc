"""Hypernetwork LoRA: a learned task embedding e_i generates its task's LoRA from a bank the share group
trains; von Oswald et al.'s (2020) output regulariser keeps what the bank generates for earlier tasks.

    B_{i,k} = G_k e_i                                G_k (d_out·r x d_e): site k's bank, e_i ∈ R^{d_e}
    ΔW_{i,k} = (lora_alpha / r) · B_{i,k} A_k        A_k (r x d_in): site k's down-projection, random, frozen

at LoRA's sites (query/value for BERT): a linear hypernetwork (HyperFormer generates adapters with an
MLP per layer).  The per-task state is e_i alone; A and the banks are the share group's shared part.
Unlike `task-embedding`, where e_i only shifts a frozen shared adapter's output, a later task here trains
the bank too (train_shared=true), so it adapts as freely as a LoRA whose A is frozen (LoRA-FA), and the
loss keeps the earlier tasks:

    L = CE + output_reg · Σ_{j<t} Σ_k ‖ΔW_{j,k}(θ) − ΔW*_{j,k}‖²_F / Σ_{j<t} Σ_k ‖ΔW*_{j,k}‖²_F

with ΔW*_{j,k} what the bank generated for task j when task t's training began (the earlier e_j are
frozen).  It is relative, so output_reg does not depend on the weights' scale.  The earlier embeddings it
keeps ("anchors") travel in the shared part's state, so a `continual train` in a new process keeps the
tasks that trained earlier versions just as a sequence does.

How a task starts, and what that means for bytes.  A is drawn as peft draws lora_A (kaiming-uniform) and
stays so; the bank starts at zero.  A new task's e_i is the unit vector of a bank column no task uses yet,
so it starts with B = 0 (the encoder as it was, like a fresh LoRA) and, Adam's steps being per entry, its
training moves its own column at LoRA's rate and no other task's, except through the columns its e_i
mixes in as it trains; those the regulariser holds.  So while a group holds at most d_e tasks, each task's
up-projection lives in a column of its own: the group stores about what shared-A LoRA stores for d_e
tasks (one B per task), allocated up front, and a task version stores d_e numbers.  From task d_e + 1 on,
a new task starts on the bank's least-used direction and shares columns with earlier tasks.

Why A is frozen (order-1 dev, seed 0; bench notes): trained with the group's first task (dbpedia), A left
amazon at 34.7 even without the regulariser, against 40.7 for per-task LoRA: a down-projection trained
for topics serves the review tasks worse than a random one.  Frozen, it also never moves an earlier task.
Hand-written: peft has no hypernetwork kind.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from modeling.kinds.base import KindConfig, KindError, SharedPartSettings
from modeling.kinds.hooks import copy_checked, find_target_modules, io_features, meta_encoder
from modeling.kinds.lora import LoraKindConfig, default_lora_targets
from modeling.kinds.shared import SharedPartKind, SharedPartLayers

if TYPE_CHECKING:
    from modeling.model import AdapterModel

EMBEDDING_KEY = "task_embedding"  # the slot state: {"task_embedding": e_i (d_e,)}
ANCHOR_PREFIX = "anchor."  # shared-state keys of the embeddings the regulariser keeps: "anchor.<task>"


@dataclasses.dataclass
class HyperLoraConfig(SharedPartSettings, LoraKindConfig):
    """LoRA's settings (r, lora_alpha, lora_dropout, target_modules) for the generated LoRA, the bank's
    width d_e and the strength of the output regulariser."""

    # Every task trains the bank (the output regulariser keeps earlier tasks); false trains only e_i.
    train_shared: bool = True
    # d_e: numbers per task (32 bytes at 8, 0.01% of a rank-8 LoRA on MiniLM) and the bank's width: up to
    # d_e tasks of a group each get a bank column (one LoRA up-projection per site) of their own.
    task_embedding_dim: int = 8
    output_reg: float = 10.0  # weight of the relative output regulariser (0 switches it off)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.task_embedding_dim < 1:
            raise KindError(f"task_embedding_dim={self.task_embedding_dim} must be >= 1; set --set task_embedding_dim=8")
        if not self.output_reg >= 0:
            raise KindError(f"output_reg={self.output_reg} must be >= 0; set --set output_reg=10")


class LoraBank(nn.Module):
    """The shared part of one share group: per site, A (r, d_in, frozen) and the bank, d_e columns
    (d_out·r each) kept as separate Parameters so a task trains its own column and no other."""

    def __init__(self, sites: dict[str, tuple[int, int]], r: int, d_e: int):
        super().__init__()
        self.r, self.d_e = r, d_e
        self.A = nn.ParameterDict()
        self.G = nn.ModuleDict()  # site key -> ParameterList of d_e columns (d_out·r,)
        for key, (d_in, d_out) in sites.items():
            a = torch.empty(r, d_in)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # peft's lora_A init
            self.A[key] = nn.Parameter(a)
            self.G[key] = nn.ParameterList([nn.Parameter(torch.zeros(d_out * r)) for _ in range(d_e)])

    def bank(self, key: str) -> torch.Tensor:
        """Site `key`'s bank as one (d_out·r, d_e) tensor."""
        return torch.stack(list(self.G[key]), dim=1)

    def column(self, m: int) -> list[nn.Parameter]:
        """Column m of every site's bank."""
        return [cols[m] for cols in self.G.values()]

    def factors(self, key: str, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A (r, d_in), B (d_out, r)) for site `key` and task embedding e (d_e,)."""
        return self.A[key], (self.bank(key) @ e).view(-1, self.r)

    def delta_weights(self, e: torch.Tensor, scaling: float) -> dict[str, torch.Tensor]:
        """Site key -> ΔW = scaling · B A (d_out, d_in) for task embedding e."""
        out = {}
        for key in self.A:
            A, B = self.factors(key, e)
            out[key] = scaling * (B @ A)
        return out

    @torch.no_grad()
    def pick_column(self, taken: set[int]) -> int:
        """The column a new task trains: the first one that is still zero and not in `taken` (a column of its
        own), else the least-used one (smallest norm), which it shares with the tasks that use it."""
        norms = [sum(float(cols[m].float().pow(2).sum()) for cols in self.G.values()) for m in range(self.d_e)]
        free = [m for m in range(self.d_e) if norms[m] == 0 and m not in taken]
        return free[0] if free else min(range(self.d_e), key=norms.__getitem__)

    @torch.no_grad()
    def used_by(self, m: int, anchors: list[torch.Tensor]) -> bool:
        """Whether column m shapes what the bank generates for any of `anchors` (a weight and a non-zero column)."""
        return any(bool(cols[m].any()) for cols in self.G.values()) and any(float(e[m]) != 0.0 for e in anchors)


class HyperLoraLayers(SharedPartLayers):
    """adapter_modules["hyper-lora"]: `shared[group]` a LoraBank, one embedding and one bank column per slot,
    and per group the anchors (task name -> e_j) the bank must keep answering for."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.ParameterDict()  # slot -> e_i (d_e,)
        self.dropout = nn.ModuleDict()  # slot -> Dropout on the branch input
        self.columns: dict[str, int] = {}  # slot -> the bank column it trains
        self.anchors: dict[str, dict[str, torch.Tensor]] = {}  # group -> {task: e_j} loaded with the shared part
        self.fresh: set[str] = set()  # slots whose e_i was set by attach, not loaded (reset when the bank is)
        self.pending: set[str] = set()  # slots attached but not trained yet (their column follows a loaded bank)

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        slot = self.active
        if slot is None:
            return None
        bank = self.shared[self.group_of(slot)]
        if key not in bank.A:
            return None
        A, B = bank.factors(key, self.embeddings[slot])
        config = self.slot_config[slot]
        # Same op order as peft's LoraLayer: lora_B(lora_A(dropout(x))) * scaling.
        z = F.linear(self.dropout[slot](x.to(A.dtype)), A)  # (..., r)
        return out + (F.linear(z, B) * (config.lora_alpha / config.r)).to(out.dtype)

    def start(self, slot: str) -> None:
        """Give `slot` a bank column and, unless its e_i was loaded (a warm start), e_i = that column's unit
        vector (B = 0 while the column is unused)."""
        group = self.group_of(slot)
        bank = self.shared[group]
        taken = {m for other, m in self.columns.items() if other != slot and self.group_of(other) == group}
        self.columns[slot] = m = bank.pick_column(taken)
        if slot in self.fresh:
            with torch.no_grad():
                self.embeddings[slot].zero_()
                self.embeddings[slot][m] = 1.0

    def group_anchors(self, group: str, without: str | None = None) -> dict[str, torch.Tensor]:
        """The embeddings the group's bank must keep: those loaded with it, then those of the group's slots
        in this model that trained it (a slot's own training replaces an anchor of the same name)."""
        anchors = dict(self.anchors.get(group, {}))
        for slot, config in self.slot_config.items():
            if config.share_group == group and self.trains_shared(slot):
                anchors[slot] = self.embeddings[slot].detach().clone()
        anchors.pop(without, None)
        return anchors


def output_regularizer(bank: LoraBank, anchors: list[torch.Tensor], scaling: float,
                       strength: float) -> Callable[[], torch.Tensor]:
    """The relative output regulariser over `anchors`, its targets taken from `bank` as it is now."""
    with torch.no_grad():
        targets = [bank.delta_weights(e, scaling) for e in anchors]
        norm = sum(float(t.float().pow(2).sum()) for d in targets for t in d.values())
    norm = max(norm, 1e-12)  # an untrained bank makes ΔW* = 0; any change then counts in full

    def loss() -> torch.Tensor:
        total = torch.zeros((), device=anchors[0].device)
        for e, target in zip(anchors, targets):
            for key, dw in bank.delta_weights(e, scaling).items():
                total = total + (dw.float() - target[key].float()).pow(2).sum()
        return strength * total / norm

    return loss


class HyperLoraKind(SharedPartKind):
    name = "hyper-lora"
    config_cls = HyperLoraConfig
    # Every task trains an up-projection from B = 0, as LoRA does: a random head, as for LoRA.
    default_head_init = "fresh"
    group_fields = ("r", "target_modules", "task_embedding_dim")  # the bank's shapes

    def new_layers(self, model: "AdapterModel") -> HyperLoraLayers:
        return HyperLoraLayers()

    def layers(self, model: "AdapterModel") -> HyperLoraLayers:
        return super().layers(model)  # type: ignore[return-value]

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, HyperLoraConfig)
        config.target_modules = default_lora_targets(config.target_modules, model.encoder.config.model_type)
        super().attach(model, slot, config)

    def make_shared(self, model: "AdapterModel", config: SharedPartSettings) -> nn.Module:
        assert isinstance(config, HyperLoraConfig)
        layers, sites = self.layers(model), {}
        modules = find_target_modules(model.encoder, config.target_modules)
        for name, module in modules:
            sites[layers.hook_site(name, module)] = io_features(module)
        weight = modules[0][1].weight
        return LoraBank(sites, config.r, config.task_embedding_dim).to(weight.device, weight.dtype)

    def attach_own(self, model: "AdapterModel", slot: str, config: SharedPartSettings) -> None:
        assert isinstance(config, HyperLoraConfig)
        layers = self.layers(model)
        weight = next(iter(layers.shared[config.share_group].A.values()))
        layers.embeddings[slot] = nn.Parameter(torch.zeros(config.task_embedding_dim, device=weight.device, dtype=weight.dtype))
        layers.fresh.add(slot)
        layers.pending.add(slot)
        layers.start(slot)
        layers.dropout[slot] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()

    def drop(self, model: "AdapterModel", slot: str) -> None:
        layers = self.layers(model)
        group = layers.group_of(slot)
        super().drop(model, slot)
        if group not in {c.share_group for c in layers.slot_config.values()}:
            layers.anchors.pop(group, None)

    def drop_own(self, layers: SharedPartLayers, slot: str) -> None:
        assert isinstance(layers, HyperLoraLayers)
        del layers.embeddings[slot], layers.dropout[slot], layers.columns[slot]
        layers.fresh.discard(slot)
        layers.pending.discard(slot)

    def own_parameters(self, layers: SharedPartLayers, slot: str) -> list[nn.Parameter]:
        assert isinstance(layers, HyperLoraLayers)
        return [layers.embeddings[slot]]

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        """e_i and, where the slot trains the shared part, its bank column; A stays as drawn and the other
        columns as the tasks that own them left them (module docstring)."""
        layers = self.layers(model)
        params = self.own_parameters(layers, slot)
        if layers.trains_shared(slot):
            params += layers.shared[layers.group_of(slot)].column(layers.columns[slot])
        return params

    def begin_training(self, model: "AdapterModel", slot: str) -> Callable[[], torch.Tensor] | None:
        """A slot whose e_i a warm start copied gets weight 1 on its own column (still zero, so nothing it
        computes changes; with weight 0 the column would get no gradient).  Returns the output regulariser
        (None when the slot leaves the bank alone, or no earlier task depends on its column)."""
        layers = self.layers(model)
        config = layers.slot_config[slot]
        layers.fresh.discard(slot)
        layers.pending.discard(slot)
        group, m = layers.group_of(slot), layers.columns[slot]
        bank = layers.shared[group]
        unused = not any(bool(col.any()) for col in bank.column(m))
        if layers.trains_shared(slot) and unused and float(layers.embeddings[slot].detach()[m]) == 0.0:
            with torch.no_grad():
                layers.embeddings[slot][m] = 1.0
        if not layers.trains_shared(slot) or config.output_reg == 0:
            return None
        anchors = list(layers.group_anchors(group, without=slot).values())
        if not bank.used_by(layers.columns[slot], anchors):
            return None  # a column of its own: no earlier task's weights depend on it
        weight = next(iter(bank.A.values()))
        return output_regularizer(bank, [e.to(weight.device, weight.dtype) for e in anchors],
                                  config.lora_alpha / config.r, config.output_reg)

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {EMBEDDING_KEY: self.layers(model).embeddings[slot].detach().clone()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {EMBEDDING_KEY}:
            raise KindError(f"hyper-lora weights must hold exactly '{EMBEDDING_KEY}', got {sorted(state)[:3]}")
        layers = self.layers(model)
        copy_checked(layers.embeddings[slot], state[EMBEDDING_KEY], EMBEDDING_KEY, "hyper-lora")
        layers.fresh.discard(slot)

    def _named_shared(self, layers: HyperLoraLayers, group: str) -> dict[str, nn.Parameter]:
        """The shared part under its state keys: `<dotted site name>.lora_A` and `.lora_B_bank` (d_out·r, d_e)."""
        bank = layers.shared[group]
        named = {}
        for key in bank.A:
            named[f"{layers.site_names[key]}.lora_A"] = bank.A[key]
            named[f"{layers.site_names[key]}.lora_B_bank"] = bank.bank(key)
        return named

    def shared_state(self, layers: SharedPartLayers, group: str) -> dict[str, torch.Tensor]:
        assert isinstance(layers, HyperLoraLayers)
        state = dict(self._named_shared(layers, group))
        for task, e in sorted(layers.group_anchors(group).items()):
            state[ANCHOR_PREFIX + task] = e
        return {k: v.detach().clone() for k, v in state.items()}

    def load_shared(self, layers: SharedPartLayers, group: str, state: dict[str, torch.Tensor]) -> None:
        assert isinstance(layers, HyperLoraLayers)
        anchors = {k[len(ANCHOR_PREFIX):]: v for k, v in state.items() if k.startswith(ANCHOR_PREFIX)}
        weights = {k: v for k, v in state.items() if not k.startswith(ANCHOR_PREFIX)}
        params = self._named_shared(layers, group)  # the keys expected
        if set(weights) != set(params):
            missing, unexpected = sorted(set(params) - set(weights)), sorted(set(weights) - set(params))
            raise KindError(f"hyper-lora shared weights do not fit this base model: missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]}")
        bank = layers.shared[group]
        widths = {v.shape[-1] for k, v in weights.items() if k.endswith(".lora_B_bank") and v.dim() == 2}
        if widths and widths != {bank.d_e}:
            raise KindError(f"hyper-lora share group '{group}' has task_embedding_dim={min(widths)}, this task asks for "
                            f"task_embedding_dim={bank.d_e}; use the group's value or another --set share_group=NAME")
        for task, e in anchors.items():
            if e.shape != (bank.d_e,):
                raise KindError(f"hyper-lora anchor '{task}' has shape {tuple(e.shape)}, this group needs ({bank.d_e},)")
        for key in bank.A:
            site = layers.site_names[key]
            copy_checked(bank.A[key], weights[f"{site}.lora_A"], f"{site}.lora_A", "hyper-lora shared")
            stacked = bank.bank(key).detach().clone()
            copy_checked(stacked, weights[f"{site}.lora_B_bank"], f"{site}.lora_B_bank", "hyper-lora shared")
            with torch.no_grad():
                for m, col in enumerate(bank.G[key]):
                    col.copy_(stacked[:, m])
        layers.anchors[group] = {task: e.clone() for task, e in anchors.items()}
        for slot in sorted(layers.pending):  # a task not trained yet starts on a column of the bank it now has
            if layers.group_of(slot) == group:
                layers.start(slot)

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """d_e: one task embedding per task, whatever the number of sites."""
        assert isinstance(config, HyperLoraConfig)
        return config.task_embedding_dim

    def shared_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per targeted Linear (d_in -> d_out): A (r·d_in) and the bank (d_out·r·d_e); once per share group
        (the anchors, d_e numbers per task that trained the bank, are not parameters)."""
        assert isinstance(config, HyperLoraConfig)
        targets = default_lora_targets(config.target_modules, base_config.model_type)
        ios = [io_features(m) for _, m in find_target_modules(meta_encoder(base_config), targets)]
        return sum(config.r * d_in + d_out * config.r * config.task_embedding_dim for d_in, d_out in ios)
