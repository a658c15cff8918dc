"""Bottleneck adapters (Houlsby et al. 2019), per task: h <- h + W_up σ(W_down h), W_up zero-initialised.

Placement (Houlsby): after the attention-output and the FFN-output dense projections, before the
residual + LayerNorm of the base block.  The adapter runs as a forward hook on those projections
instead of replacing them, so the encoder keeps the structure peft expects and LoRA can be
injected into the same encoder.  This module also holds the small hook helpers that the other
hooked kinds (shared-factor LoRA, task-embedding adapters) use.
"""
from __future__ import annotations

import dataclasses
import weakref
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from registry.kinds.base import AdapterKind, KindConfig, KindError

if TYPE_CHECKING:
    from registry.model import AdapterModel

# Houlsby sites per architecture: the attention-output and the FFN-output projections.
HOULSBY_SITES: dict[str, list[str]] = {
    "bert": ["attention.output.dense", "output.dense"],
    "roberta": ["attention.output.dense", "output.dense"],
    "xlm-roberta": ["attention.output.dense", "output.dense"],
    "electra": ["attention.output.dense", "output.dense"],
    "distilbert": ["attention.out_lin", "ffn.lin2"],
    "gpt2": ["attn.c_proj", "mlp.c_proj"],
    "llama": ["self_attn.o_proj", "mlp.down_proj"],
    "qwen2": ["self_attn.o_proj", "mlp.down_proj"],
    "mistral": ["self_attn.o_proj", "mlp.down_proj"],
}

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh, "silu": nn.SiLU}


# --- helpers shared by the hooked kinds ----------------------------------------------------------


def split_names(value: Any) -> list[str] | None:
    """`--set target_modules=a,b` arrives as a string; configs keep a list."""
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return list(value) if value is not None else None


def check_share_group(group: str) -> None:
    if not group or "." in group:
        raise KindError(f"share_group={group!r} must be a non-empty name without '.'; set --set share_group=default")


def resolve_sites(targets: list[str] | None, model_type: str) -> list[str]:
    if targets:
        return list(targets)
    try:
        return list(HOULSBY_SITES[model_type])
    except KeyError:
        raise KindError(
            f"no default adapter sites for model type '{model_type}'; "
            f"set --set target_modules=attn_out_name,ffn_out_name"
        ) from None


def find_target_modules(encoder: nn.Module, targets: list[str]) -> list[tuple[str, nn.Module]]:
    """(dotted name, module) of every module whose name is or ends with `.target`, in model order.

    peft-wrapped layers resolve to their base layer (hooks then see the frozen base output) and
    peft's own sub-modules (lora_A.<slot>, ...) are skipped, so slots named like a target can't match.
    """
    found, seen = [], set()
    for name, module in encoder.named_modules():
        parts = name.split(".")
        if any(p.startswith("lora_") for p in parts) or parts[-1] == "base_layer":
            continue
        if any(name == t or name.endswith("." + t) for t in targets):
            base = module.get_base_layer() if hasattr(module, "get_base_layer") else module
            if id(base) not in seen:
                seen.add(id(base))
                found.append((name, base))
    if not found:
        raise KindError(f"target modules {targets} not found in the base model; set --set target_modules=name1,name2")
    return found


def io_features(module: nn.Module) -> tuple[int, int]:
    """(d_in, d_out) of a Linear, or of a GPT-2 Conv1D (weight stored as (d_in, d_out))."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":
        return tuple(module.weight.shape)  # type: ignore[return-value]
    raise KindError(f"cannot adapt {type(module).__name__}: only Linear layers are supported; set --set target_modules=...")


def meta_encoder(base_config: Any) -> nn.Module:
    """A weightless copy of the architecture, for closed-form parameter counts."""
    from transformers import AutoModel

    with torch.device("meta"):
        return AutoModel.from_config(base_config)


def site_key(name: str) -> str:
    return name.replace(".", "-")  # ModuleDict / ParameterDict keys can't contain "."


def add_output_hook(store: nn.Module, key: str, module: nn.Module) -> None:
    """Once per (store, site): module's output <- store.delta(key, input (..., d_in), output (..., d_out)).

    `delta` returns None to leave the output alone.  The base encoder is shared by every AdapterModel
    of the process, so the hook holds the store only weakly and removes itself once the store is gone;
    it fires only on the module it was registered on (a deep copy of the encoder inherits the hook
    but not its effect).
    """
    hooked: set[str] = store.__dict__.setdefault("_hooked_sites", set())
    if key in hooked:
        return
    module_ref, store_ref = weakref.ref(module), weakref.ref(store)

    def hook(mod: nn.Module, args: tuple, output: torch.Tensor):
        owner = store_ref()
        if owner is None:
            handle.remove()
            return None
        if mod is not module_ref():
            return None
        return owner.delta(key, args[0], output)

    handle = module.register_forward_hook(hook)
    hooked.add(key)


# --- the per-task bottleneck adapter -------------------------------------------------------------


@dataclasses.dataclass
class AdapterConfig(KindConfig):
    bottleneck: int = 64  # width m of the bottleneck: W_down (m x H), W_up (H x m)
    activation: str = "relu"  # σ between the projections: relu, gelu, tanh or silu
    # Modules whose output is adapted; None = the Houlsby sites of the architecture
    # (attention.output.dense and output.dense for BERT-like encoders).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.bottleneck < 1:
            raise KindError(f"bottleneck={self.bottleneck} must be >= 1; set --set bottleneck=64 for example")
        if self.activation not in ACTIVATIONS:
            raise KindError(f"activation={self.activation!r} is not one of {sorted(ACTIVATIONS)}; set --set activation=relu")
        self.target_modules = split_names(self.target_modules)


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


class BottleneckLayers(nn.Module):
    """adapter_modules["adapter"]: slot -> site key -> Bottleneck; `active` picks the slot hooks use."""

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleDict()  # slot -> ModuleDict(site key -> Bottleneck)
        self.site_names: dict[str, str] = {}  # site key -> dotted module name (state-dict keys)
        self.active: str | None = None

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        slot = self.active
        if slot is None or key not in self.adapters[slot]:
            return None
        return out + self.adapters[slot][key](out).to(out.dtype)  # (B, T, H)


class BottleneckAdapterKind(AdapterKind):
    name = "adapter"
    config_cls = AdapterConfig

    def _store(self, model: "AdapterModel") -> BottleneckLayers:
        if self.name not in model.adapter_modules:
            model.adapter_modules[self.name] = BottleneckLayers()
        return model.adapter_modules[self.name]  # type: ignore[return-value]

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, AdapterConfig)
        config.target_modules = resolve_sites(config.target_modules, model.encoder.config.model_type)
        store = self._store(model)
        sites = nn.ModuleDict()
        for name, module in find_target_modules(model.encoder, config.target_modules):
            key = site_key(name)
            _, d_out = io_features(module)
            sites[key] = Bottleneck(d_out, config.bottleneck, config.activation).to(module.weight.device, module.weight.dtype)
            store.site_names[key] = name
            add_output_hook(store, key, module)
        store.adapters[slot] = sites

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        store = self._store(model)
        store.active = slot if slot in store.adapters else None

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        store = self._store(model)
        return {f"{store.site_names[key]}.{k}": v.detach().clone()
                for key, mod in store.adapters[slot].items() for k, v in mod.state_dict().items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        store = self._store(model)
        load_prefixed(store.adapters[slot], store.site_names, state, "adapter")

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return list(self._store(model).adapters[slot].parameters())

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Per site of output width H: W_down + b_down + W_up + b_up = 2·H·m + m + H."""
        assert isinstance(config, AdapterConfig)
        m = config.bottleneck
        sites = find_target_modules(meta_encoder(base_config), resolve_sites(config.target_modules, base_config.model_type))
        return sum(2 * io_features(mod)[1] * m + m + io_features(mod)[1] for _, mod in sites)

    def drop(self, model: "AdapterModel", slot: str) -> None:
        store = self._store(model)
        del store.adapters[slot]
        if store.active == slot:
            store.active = None


def load_prefixed(modules: nn.ModuleDict, site_names: dict[str, str], state: dict[str, torch.Tensor], what: str) -> None:
    """Load `{dotted site name}.{param}` keys into a ModuleDict keyed by site key; refuse a mismatch."""
    expected = {f"{site_names[key]}.{k}" for key, mod in modules.items() for k in mod.state_dict()}
    if set(state) != expected:
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        raise KindError(f"{what} weights do not fit this base model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for key, mod in modules.items():
            for k, v in mod.state_dict().items():
                copy_checked(v, state[f"{site_names[key]}.{k}"], f"{site_names[key]}.{k}", what)


def copy_checked(dst: torch.Tensor, src: torch.Tensor, name: str, what: str) -> None:
    if dst.shape != src.shape:
        raise KindError(f"{what} weight {name} has shape {tuple(src.shape)}, this model needs {tuple(dst.shape)}: "
                        f"it was trained on another base model or with other settings")
    with torch.no_grad():
        dst.copy_(src)
