"""Per-task LoRA through peft: W' = W + (lora_alpha / r) * B A, W frozen; peft adapter name = slot.

peft wraps each targeted Linear in a `LoraLayer` that holds every slot's A and B; the wrapper goes
again (the plain Linear is put back) when its last slot is dropped.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import default_targets, find_target_modules, io_features, meta_encoder, split_names

if TYPE_CHECKING:
    from modeling.model import AdapterModel


@dataclasses.dataclass
class LoraKindConfig(KindConfig):
    """LoRA's settings, with peft's names; the one place they are checked (TrainConfig and the
    shared-factor LoRA kinds use this class's checks)."""

    r: int = 16  # rank of B (d x r) and A (r x k); the same default as TrainConfig.r
    lora_alpha: int = 16  # scaling numerator: delta = (lora_alpha / r) * B A
    lora_dropout: float = 0.1  # dropout on the LoRA branch input
    # Module names to adapt; None lets peft pick its default for the architecture
    # (query/value for BERT-like encoders, c_attn for GPT-2, q_proj/v_proj for Llama).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        for ok, key, valid in (
            (self.r >= 1, "r", "an integer >= 1"),
            (self.lora_alpha > 0, "lora_alpha", "a positive number"),
            (0 <= self.lora_dropout < 1, "lora_dropout", "a number in [0, 1)"),
        ):
            if not ok:
                raise KindError(f"{key}={getattr(self, key)!r} is invalid: must be {valid} (--set {key}=...)")
        self.target_modules = split_names(self.target_modules)


def default_lora_targets(targets: list[str] | None, model_type: str) -> list[str]:
    """`targets`, or peft's default LoRA targets for the architecture (query/value for BERT)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    return default_targets(targets, model_type, DEFAULTS, "LoRA target modules", "name1,name2")


def unwrap_peft_layers(root: nn.Module, only_empty: bool) -> None:
    """Put each peft layer under `root` back to the module it wraps (the same object, so the same weights
    and hooks); with `only_empty`, only layers that hold no adapter any more.

    Hand-written: peft's own `unload()` needs a PeftModel, and these encoders are plain transformers models.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    # Innermost first, one level each: a layer of another peft method may sit inside (an OSF layer around a
    # LoRA layer), and unwrapping the outer one must not take the inner one with it.
    for name, module in reversed(list(root.named_modules())):
        if isinstance(module, BaseTunerLayer) and not (only_empty and module._all_available_adapter_names()):
            parent_name, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent_name), child, module.base_layer)


def _tuner_layers(model: "AdapterModel") -> list:
    from peft.tuners.lora import LoraLayer

    return [m for m in model.encoder.modules() if isinstance(m, LoraLayer)]


class LoraKind(AdapterKind):
    name = "lora"
    config_cls = LoraKindConfig
    stacks = True

    def peft_config(self, config: LoraKindConfig):
        from peft import LoraConfig

        return LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            bias="none",
        )

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        import warnings

        from peft import inject_adapter_in_model

        assert isinstance(config, LoraKindConfig)
        config.target_modules = default_lora_targets(config.target_modules, model.encoder.config.model_type)
        try:
            with warnings.catch_warnings():  # several adapters in one model is the point here
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                inject_adapter_in_model(self.peft_config(config), model.encoder, adapter_name=slot)
        except ValueError as err:
            raise KindError(f"LoRA: {str(err).splitlines()[0]}") from None

    def drop(self, model: "AdapterModel", slot: str) -> None:
        from peft.functional import delete_adapter
        from peft.tuners.lora import LoraLayer

        for layer in _tuner_layers(model):
            # Off first: peft would otherwise pick another adapter to activate, and set_adapter flips requires_grad.
            layer._active_adapter = [a for a in layer.active_adapters if a != slot]
        delete_adapter(model.encoder, slot, prefix="lora_", layer_cls=LoraLayer)
        peft_configs = getattr(model.encoder, "peft_config", None)  # inject_adapter_in_model records each slot there
        if isinstance(peft_configs, dict):
            peft_configs.pop(slot, None)
            if not peft_configs:
                del model.encoder.peft_config
        unwrap_peft_layers(model.encoder, only_empty=True)

    def tie(self, model: "AdapterModel", slot: str, source_slot: str) -> None:
        tied = 0
        for layer in _tuner_layers(model):
            if source_slot not in layer.lora_A:
                continue
            if slot not in layer.lora_A:
                raise KindError(f"slot '{slot}' has no LoRA layer at {type(layer).__name__}; add the slot before tying it")
            if layer.r[slot] != layer.r[source_slot] or layer.scaling[slot] != layer.scaling[source_slot]:
                raise KindError(f"LoRA slot '{slot}' (r={layer.r[slot]}) cannot share '{source_slot}''s factors "
                                f"(r={layer.r[source_slot]}); give both the same --set r= and lora_alpha=")
            layer.lora_A[slot] = layer.lora_A[source_slot]
            layer.lora_B[slot] = layer.lora_B[source_slot]
            tied += 1
        if not tied:
            raise KindError(f"slot '{source_slot}' has no LoRA layers to share with '{slot}'")

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        for layer in _tuner_layers(model):
            # A name the layer does not hold disables LoRA in it (peft skips unknown adapters).
            # Set the private field directly: peft's set_adapter also flips requires_grad,
            # and which parameters train is the trainer's decision, not inference's.
            # Stacked slots (AdapterModel.stack) stay on too: peft sums every active adapter's B·A.
            wanted = [slot, *model.slots[slot].stacked] if slot in model.slots else [slot]
            layer._active_adapter = [s for s in wanted if s in layer.lora_A]

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model.encoder, adapter_name=slot).items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.encoder, state, adapter_name=slot)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise KindError(f"LoRA weights do not fit the base model: unexpected keys {unexpected[:3]}")

    def down_projections(self, model: "AdapterModel", slot: str) -> dict[str, nn.Parameter]:
        """`slot`'s A matrices (r x k, peft's lora_A weights) by adapted module name: the subspace each LoRA
        writes into its layer's input space (O-LoRA's orthogonality loss compares them across tasks)."""
        return {name: module.lora_A[slot].weight for name, module in model.encoder.named_modules()
                if hasattr(module, "lora_A") and isinstance(module.lora_A, nn.ModuleDict) and slot in module.lora_A}

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        params = []
        for layer in _tuner_layers(model):
            if slot in layer.lora_A:
                params += list(layer.lora_A[slot].parameters()) + list(layer.lora_B[slot].parameters())
        return params

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """r * (d_in + d_out) per adapted Linear (or GPT-2 Conv1D); here computed from the base config's shapes."""
        assert isinstance(config, LoraKindConfig)
        targets = default_lora_targets(config.target_modules, base_config.model_type)
        # The targets match as peft matches them (a name, or a dotted suffix such as intermediate.dense).
        return sum(config.r * sum(io_features(module))
                   for _, module in find_target_modules(meta_encoder(base_config), targets))
