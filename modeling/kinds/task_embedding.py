"""Task-embedding (task-conditioned) adapters: a bottleneck adapter fed a learned task embedding.

    h <- h + f_out([σ(f_in(h)); e_i])      f_in: H -> m, f_out: m + d_e -> H, e_i ∈ R^{d_e}

Placement as Houlsby adapters (a forward hook on the attention-output and FFN-output projections,
before the residual LayerNorm).  `f_in`/`f_out` exist once per site per share group and are shared
by the group's tasks; `e_i` is ONE vector per task, used at every site.  One vector (rather than one
per site) keeps e_i a task embedding in the usual sense: comparable across tasks, copyable from a
related task (`init_task_embedding_from`), d_e numbers per task.  Because f_out is linear,
f_out([z; e_i]) = W_z z + W_e^{site} e_i + b: the task embedding acts as a learned per-task,
per-site shift of the shared adapter's output, the sites differing through their shared W_e.

f_out is zero-initialised, so a fresh group's adapter is the identity.  e_i is random, never zero:
with f_out's W_e zero, e_i's gradient is W_e^T g = 0 and W_e's gradient is g e_i^T, so zero e_i and
zero W_e would both stay zero for ever.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import (
    ACTIVATIONS, add_output_hook, check_share_group, copy_checked, find_target_modules, io_features, load_prefixed,
    meta_encoder, resolve_sites, site_key, split_names,
)

if TYPE_CHECKING:
    from modeling.model import AdapterModel

EMBEDDING_KEY = "task_embedding"  # the slot state: {"task_embedding": e_i (d_e,)}


@dataclasses.dataclass
class TaskEmbeddingConfig(KindConfig):
    bottleneck: int = 64  # width m of the shared bottleneck f_in: H -> m
    task_embedding_dim: int = 32  # d_e, size of the per-task embedding e_i concatenated to σ(f_in(h))
    activation: str = "relu"  # σ: relu, gelu, tanh or silu
    # Modules whose output is adapted; None = the Houlsby sites (attention.output.dense, output.dense for BERT).
    target_modules: list[str] | None = None
    share_group: str = "default"  # tasks of one group share f_in / f_out
    # Keep training f_in / f_out with every new task (earlier tasks may then forget); False freezes them
    # after the group's first task, so a later task trains only its e_i (and its head).
    train_shared: bool = True

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise KindError(f"bottleneck={self.bottleneck} must be >= 1; set --set bottleneck=64 for example")
        if self.task_embedding_dim < 1:
            raise KindError(f"task_embedding_dim={self.task_embedding_dim} must be >= 1; set --set task_embedding_dim=32")
        if self.activation not in ACTIVATIONS:
            raise KindError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}; set --set activation=relu")
        check_share_group(self.share_group)
        self.target_modules = split_names(self.target_modules)


class ConditionedBottleneck(nn.Module):
    """The shared part at one site: f_in (H -> m) and f_out (m + d_e -> H, zero-initialised)."""

    def __init__(self, hidden: int, bottleneck: int, embedding_dim: int, activation: str):
        super().__init__()
        self.f_in = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.f_out = nn.Linear(bottleneck + embedding_dim, hidden)
        nn.init.zeros_(self.f_out.weight)
        nn.init.zeros_(self.f_out.bias)

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """h (B, T, H), e (d_e,) -> f_out([σ(f_in(h)); e]) (B, T, H)."""
        z = self.act(self.f_in(h))  # (B, T, m)
        m = z.shape[-1]
        # Equal to f_out(cat([z, e.expand(B, T, d_e)])) without materialising the (B, T, d_e) copy of e.
        shift = F.linear(e, self.f_out.weight[:, m:], self.f_out.bias)  # (H,)
        return F.linear(z, self.f_out.weight[:, :m]) + shift


class TaskEmbeddingLayers(nn.Module):
    """adapter_modules["task-embedding"]: shared bottlenecks per group, one embedding per slot."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.ModuleDict()  # group -> ModuleDict(site key -> ConditionedBottleneck)
        self.embeddings = nn.ParameterDict()  # slot -> e_i (d_e,)
        self.slot_config: dict[str, TaskEmbeddingConfig] = {}
        self.group_config: dict[str, TaskEmbeddingConfig] = {}
        self.group_first: dict[str, str | None] = {}  # as in shared-factor LoRA: who always trains the group
        self.site_names: dict[str, str] = {}
        self.active: str | None = None

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        slot = self.active
        if slot is None:
            return None
        sites = self.shared[self.slot_config[slot].share_group]
        if key not in sites:
            return None
        return out + sites[key](out, self.embeddings[slot]).to(out.dtype)


class TaskEmbeddingKind(AdapterKind):
    name = "task-embedding"
    config_cls = TaskEmbeddingConfig

    def _layers(self, model: "AdapterModel") -> TaskEmbeddingLayers:
        if self.name not in model.adapter_modules:
            model.adapter_modules[self.name] = TaskEmbeddingLayers()
        return model.adapter_modules[self.name]  # type: ignore[return-value]

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, TaskEmbeddingConfig)
        config.target_modules = resolve_sites(config.target_modules, model.encoder.config.model_type)
        layers = self._layers(model)
        group = config.share_group
        known = layers.group_config.get(group)
        if known is not None:
            for field in ("bottleneck", "task_embedding_dim", "activation", "target_modules"):
                if getattr(known, field) != getattr(config, field):
                    raise KindError(
                        f"task-embedding share group '{group}' has {field}={getattr(known, field)}, this task asks for "
                        f"{field}={getattr(config, field)}; use the group's value or another --set share_group=NAME"
                    )
        sites = find_target_modules(model.encoder, config.target_modules)
        weight = sites[0][1].weight
        if known is None:
            shared = nn.ModuleDict()
            for name, module in sites:
                hidden = io_features(module)[1]
                shared[site_key(name)] = ConditionedBottleneck(
                    hidden, config.bottleneck, config.task_embedding_dim, config.activation
                ).to(weight.device, weight.dtype)
            layers.shared[group] = shared
            layers.group_config[group] = dataclasses.replace(config)
            layers.group_first[group] = slot
        for name, module in sites:
            layers.site_names[site_key(name)] = name
            add_output_hook(layers, site_key(name), module)
        e = torch.randn(config.task_embedding_dim, device=weight.device, dtype=weight.dtype)
        layers.embeddings[slot] = nn.Parameter(e / config.task_embedding_dim**0.5)  # ‖e‖ ≈ 1; never zero (see top)
        layers.slot_config[slot] = config

    def init_task_embedding_from(self, model: "AdapterModel", slot: str, other_slot: str) -> None:
        """Start `slot`'s e_i from `other_slot`'s (warm start from a related task of the same group)."""
        layers = self._layers(model)
        for s in (slot, other_slot):
            if s not in layers.embeddings:
                raise KindError(f"slot '{s}' has no task-embedding adapter; task-embedding slots: {sorted(layers.embeddings)}")
        copy_checked(layers.embeddings[slot], layers.embeddings[other_slot], other_slot, "task embedding")

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        layers = self._layers(model)
        layers.active = slot if slot in layers.embeddings else None

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {EMBEDDING_KEY: self._layers(model).embeddings[slot].detach().clone()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {EMBEDDING_KEY}:
            raise KindError(f"task-embedding weights must hold exactly '{EMBEDDING_KEY}', got {sorted(state)[:3]}")
        copy_checked(self._layers(model).embeddings[slot], state[EMBEDDING_KEY], EMBEDDING_KEY, "task-embedding")

    def shared_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        layers = self._layers(model)
        sites = layers.shared[layers.slot_config[slot].share_group]
        return {f"{layers.site_names[key]}.{k}": v.detach().clone()
                for key, mod in sites.items() for k, v in mod.state_dict().items()}

    def load_shared_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        layers = self._layers(model)
        group = layers.slot_config[slot].share_group
        load_prefixed(layers.shared[group], layers.site_names, state, "task-embedding shared")
        layers.group_first[group] = None  # trained elsewhere: trains here only if train_shared

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        layers = self._layers(model)
        config = layers.slot_config[slot]
        params = [layers.embeddings[slot]]
        if config.train_shared or layers.group_first.get(config.share_group) == slot:
            params += list(layers.shared[config.share_group].parameters())
        return params

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """d_e: one task embedding per task, whatever the number of sites."""
        assert isinstance(config, TaskEmbeddingConfig)
        return config.task_embedding_dim

    def shared_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per site of width H: f_in (H·m + m) + f_out ((m + d_e)·H + H); once per share group."""
        assert isinstance(config, TaskEmbeddingConfig)
        m, d = config.bottleneck, config.task_embedding_dim
        sites = find_target_modules(meta_encoder(base_config), resolve_sites(config.target_modules, base_config.model_type))
        return sum(h * m + m + (m + d) * h + h for h in (io_features(mod)[1] for _, mod in sites))

    def drop(self, model: "AdapterModel", slot: str) -> None:
        layers = self._layers(model)
        del layers.embeddings[slot]
        layers.slot_config.pop(slot)
        if layers.active == slot:
            layers.active = None
