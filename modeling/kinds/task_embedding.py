"""Task-embedding (task-conditioned) adapters: a bottleneck adapter fed a learned task embedding.

    h <- h + f_out([σ(f_in(h)); e_i])      f_in: H -> m, f_out: m + d_e -> H, e_i ∈ R^{d_e}

Placement as Houlsby adapters (a forward hook on the attention-output and FFN-output projections,
before the residual LayerNorm).  `f_in`/`f_out` exist once per site per share group and are shared
by the group's tasks; `e_i` is ONE vector per task, used at every site.  One vector (rather than one
per site) keeps e_i a task embedding in the usual sense: comparable across tasks, copyable from a
related task (`init_task_embedding_from`), d_e numbers per task.  Because f_out is linear,
f_out([z; e_i]) = W_z z + W_e^{site} e_i + b: the task embedding acts as a learned per-task,
per-site shift of the shared adapter's output, the sites differing through their shared W_e.

Initialisation.  f_out's W_z (the part reading σ(f_in(h))) and bias start at zero and e_i starts at
zero, so a fresh slot leaves the encoder exactly as it was; W_e (the part reading e_i) starts random
(N(0, 1/d_e)), so e_i's gradient W_e^T g is non-zero from the first step.  The random W_e matters beyond
the first task: had W_e started at zero, every gradient it received during the group's first task would
be g e_1^T, leaving W_e (nearly) rank one, and a later task, which trains only its own e_i against the
frozen shared part, could then only scale one fixed direction per site.  With a random W_e each later
e_i moves in a d_e-dimensional space of per-site shifts.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from modeling.kinds.base import KindConfig, KindError, SharedPartSettings
from modeling.kinds.bottleneck import check_bottleneck
from modeling.kinds.hooks import (
    ACTIVATIONS, copy_checked, find_target_modules, io_features, load_prefixed, meta_encoder, resolve_sites, split_names,
)
from modeling.kinds.shared import SharedPartKind, SharedPartLayers

if TYPE_CHECKING:
    from modeling.model import AdapterModel

EMBEDDING_KEY = "task_embedding"  # the slot state: {"task_embedding": e_i (d_e,)}


@dataclasses.dataclass
class TaskEmbeddingConfig(SharedPartSettings):
    """share_group / train_shared: the group's tasks share f_in / f_out.  Here train_shared defaults to
    False: the group's first task trains them, and every later task only its e_i and its head, so earlier
    tasks answer bit-identically (chosen on the cl_benchmark dev splits: with f_in / f_out trained by
    every task, earlier tasks forgot; frozen, order 1 reached per-task LoRA's accuracy within a point)."""

    train_shared: bool = False
    bottleneck: int = 64  # width m of the shared bottleneck f_in: H -> m
    # d_e, size of the per-task embedding e_i concatenated to σ(f_in(h)); 128 numbers per task (512 bytes,
    # 0.2% of a rank-8 LoRA on MiniLM's query/value)
    task_embedding_dim: int = 128
    activation: str = "relu"  # σ: relu, gelu, tanh or silu
    # Modules whose output is adapted; None = the Houlsby sites (attention.output.dense, output.dense for BERT).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bottleneck(self.bottleneck, self.activation)
        if self.task_embedding_dim < 1:
            raise KindError(f"task_embedding_dim={self.task_embedding_dim} must be >= 1; set --set task_embedding_dim=32")
        self.target_modules = split_names(self.target_modules)


class ConditionedBottleneck(nn.Module):
    """The shared part at one site: f_in (H -> m) and f_out (m + d_e -> H, zero-initialised)."""

    def __init__(self, hidden: int, bottleneck: int, embedding_dim: int, activation: str):
        super().__init__()
        self.f_in = nn.Linear(hidden, bottleneck)
        self.act = ACTIVATIONS[activation]()
        self.f_out = nn.Linear(bottleneck + embedding_dim, hidden)
        with torch.no_grad():  # W_z = 0, b = 0, W_e ~ N(0, 1/d_e): see the module docstring
            self.f_out.weight.zero_()
            self.f_out.weight[:, bottleneck:].normal_(0.0, embedding_dim ** -0.5)
            self.f_out.bias.zero_()

    def forward(self, h: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """h (B, T, H), e (d_e,) -> f_out([σ(f_in(h)); e]) (B, T, H)."""
        z = self.act(self.f_in(h))  # (B, T, m)
        m = z.shape[-1]
        # Equal to f_out(cat([z, e.expand(B, T, d_e)])) without materialising the (B, T, d_e) copy of e.
        shift = F.linear(e, self.f_out.weight[:, m:], self.f_out.bias)  # (H,)
        return F.linear(z, self.f_out.weight[:, :m]) + shift


class TaskEmbeddingLayers(SharedPartLayers):
    """adapter_modules["task-embedding"]: `shared[group]` ModuleDict(site key -> ConditionedBottleneck),
    one embedding per slot."""

    def __init__(self) -> None:
        super().__init__()
        self.embeddings = nn.ParameterDict()  # slot -> e_i (d_e,)

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        slot = self.active
        if slot is None:
            return None
        sites = self.shared[self.group_of(slot)]
        if key not in sites:
            return None
        return out + sites[key](out, self.embeddings[slot]).to(out.dtype)


class TaskEmbeddingKind(SharedPartKind):
    name = "task-embedding"
    config_cls = TaskEmbeddingConfig
    # A later task trains only d_e numbers and its head: the head starts as a linear probe (LP-FT) so the few
    # steps go to e_i, not to undoing a random head (dev: order-1 ACC 62.0 -> 63.8 with the probe-started head
    # at lr 5e-3; a random head reached 52.0).
    default_head_init = "probe"
    group_fields = ("bottleneck", "task_embedding_dim", "activation", "target_modules")  # f_in / f_out's shapes

    def new_layers(self, model: "AdapterModel") -> TaskEmbeddingLayers:
        return TaskEmbeddingLayers()

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, TaskEmbeddingConfig)
        config.target_modules = resolve_sites(config.target_modules, model.encoder.config.model_type)
        super().attach(model, slot, config)

    def make_shared(self, model: "AdapterModel", config: SharedPartSettings) -> nn.Module:
        assert isinstance(config, TaskEmbeddingConfig)
        layers, shared = self.layers(model), nn.ModuleDict()
        for name, module in find_target_modules(model.encoder, config.target_modules):
            hidden = io_features(module)[1]
            part = ConditionedBottleneck(hidden, config.bottleneck, config.task_embedding_dim, config.activation)
            shared[layers.hook_site(name, module)] = part.to(module.weight.device, module.weight.dtype)
        return shared

    def attach_own(self, model: "AdapterModel", slot: str, config: SharedPartSettings) -> None:
        assert isinstance(config, TaskEmbeddingConfig)
        weight = find_target_modules(model.encoder, config.target_modules)[0][1].weight
        # zero: a fresh slot is the identity (W_e is random, so e_i still learns; module docstring)
        e = torch.zeros(config.task_embedding_dim, device=weight.device, dtype=weight.dtype)
        self.layers(model).embeddings[slot] = nn.Parameter(e)

    def drop_own(self, layers: SharedPartLayers, slot: str) -> None:
        assert isinstance(layers, TaskEmbeddingLayers)
        del layers.embeddings[slot]

    def own_parameters(self, layers: SharedPartLayers, slot: str) -> list[nn.Parameter]:
        assert isinstance(layers, TaskEmbeddingLayers)
        return [layers.embeddings[slot]]

    def init_task_embedding_from(self, model: "AdapterModel", slot: str, other_slot: str) -> None:
        """Start `slot`'s e_i from `other_slot`'s (warm start from a related task of the same group)."""
        layers = self.layers(model)
        for s in (slot, other_slot):
            if s not in layers.embeddings:
                raise KindError(f"slot '{s}' has no task-embedding adapter; task-embedding slots: {sorted(layers.embeddings)}")
        copy_checked(layers.embeddings[slot], layers.embeddings[other_slot], other_slot, "task embedding")

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {EMBEDDING_KEY: self.layers(model).embeddings[slot].detach().clone()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        if set(state) != {EMBEDDING_KEY}:
            raise KindError(f"task-embedding weights must hold exactly '{EMBEDDING_KEY}', got {sorted(state)[:3]}")
        copy_checked(self.layers(model).embeddings[slot], state[EMBEDDING_KEY], EMBEDDING_KEY, "task-embedding")

    def shared_state(self, layers: SharedPartLayers, group: str) -> dict[str, torch.Tensor]:
        return {f"{layers.site_names[key]}.{k}": v.detach().clone()
                for key, mod in layers.shared[group].items() for k, v in mod.state_dict().items()}

    def load_shared(self, layers: SharedPartLayers, group: str, state: dict[str, torch.Tensor]) -> None:
        load_prefixed(layers.shared[group], layers.site_names, state, "task-embedding shared")

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
