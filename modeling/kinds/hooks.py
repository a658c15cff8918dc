"""Helpers every hooked adapter kind uses: finding target modules, forward hooks, checked loading.

Hooked kinds (bottleneck adapters, shared-factor LoRA, task-embedding adapters) run as forward hooks
on the base encoder's projections instead of replacing them, so the encoder keeps the structure peft
expects and LoRA can be injected into the same encoder.  Each keeps its modules in one `HookedLayers`
per model (`model.adapter_modules[kind.name]`) whose `delta(key, x, out)` the hook calls.  Every hook
this package puts on an encoder (prefix tuning's pre-hooks too) goes through `add_kind_hook`.
"""
from __future__ import annotations

import weakref
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from modeling.kinds.base import KindError, KindLayers

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


def split_names(value: Any) -> list[str] | None:
    """`--set target_modules=a,b` arrives as a string; configs keep a list."""
    if isinstance(value, str):
        return [m.strip() for m in value.split(",") if m.strip()]
    return list(value) if value is not None else None


def default_targets(targets: list[str] | None, model_type: str, defaults: Mapping[str, Iterable[str]], what: str,
                    example: str) -> list[str]:
    """`targets`, or `defaults[model_type]`; a one-line error naming --set target_modules where there is none."""
    if targets:
        return list(targets)
    try:
        return list(defaults[model_type])
    except KeyError:
        raise KindError(f"no default {what} for model type '{model_type}'; set --set target_modules={example}") from None


def resolve_sites(targets: list[str] | None, model_type: str) -> list[str]:
    """`targets`, or the Houlsby sites of the architecture."""
    return default_targets(targets, model_type, HOULSBY_SITES, "adapter sites", "attn_out_name,ffn_out_name")


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


# The mark `add_kind_hook` puts on every hook function it registers.  A deep copy of a module shares
# its hook functions (deepcopy keeps functions as they are), so the mark is how `strip_kind_hooks`
# tells this package's hooks on a copy from transformers' own.
KIND_HOOK_MARK = "_adapter_kind_hook"


def add_kind_hook(layers: KindLayers, module: nn.Module, fn: Callable[..., Any], *, pre: bool = False) -> None:
    """Register `fn(layers, module, args, output)` as a forward hook on `module` for `layers`; with
    `pre`, `fn(layers, module, args, kwargs)` as a forward pre-hook that gets and may return kwargs.

    The base encoder is shared by every AdapterModel of the process, so the hook holds the layers only
    weakly and removes itself once they are gone; it fires only on the module it was registered on (a
    deep copy of the encoder inherits the hook but not its effect).  `layers.remove_hooks()` takes it
    off (a kind's last slot dropped), `strip_kind_hooks` off a copy.  `fn` must not hold `layers`.
    """
    module_ref, layers_ref = weakref.ref(module), weakref.ref(layers)

    def hook(mod: nn.Module, args: tuple, extra: Any):
        owner = layers_ref()
        if owner is None:
            handle.remove()
            return None
        if mod is not module_ref():
            return None
        return fn(owner, mod, args, extra)

    setattr(hook, KIND_HOOK_MARK, True)
    handle = module.register_forward_pre_hook(hook, with_kwargs=True) if pre else module.register_forward_hook(hook)
    layers.hook_handles.append(handle)


def strip_kind_hooks(root: nn.Module) -> None:
    """Remove every hook `add_kind_hook` registered from the modules under `root` (a copy of an encoder).

    torch has no public call to remove a hook without its handle, and the handles belong to the
    original modules, so the copy's hook dicts are edited by id (every dict a handle would clean).
    """
    for module in root.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for hook_id in [i for i, fn in hooks.items() if getattr(fn, KIND_HOOK_MARK, False)]:
                for table in (module._forward_hooks, module._forward_pre_hooks, module._forward_hooks_with_kwargs,
                              module._forward_pre_hooks_with_kwargs, module._forward_hooks_always_called):
                    table.pop(hook_id, None)


class HookedLayers(KindLayers):
    """Layers of a kind that adapts module outputs through forward hooks on the encoder's *sites*
    (bottleneck adapters, shared-factor LoRA, task-embedding adapters): `delta` computes the new output."""

    def __init__(self) -> None:
        super().__init__()
        self.site_names: dict[str, str] = {}  # site key -> dotted module name (state-dict keys)

    def hook_site(self, name: str, module: nn.Module) -> str:
        """Hook `module` (dotted `name`) once; returns its site key."""
        key = site_key(name)
        if key not in self.site_names:
            add_kind_hook(self, module, lambda owner, mod, args, output: owner.delta(key, args[0], output))
            self.site_names[key] = name
        return key

    def delta(self, key: str, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
        """The site's new output from its input x (..., d_in) and output (..., d_out); None leaves it alone."""
        raise NotImplementedError(f"{type(self).__name__} must define delta()")


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
