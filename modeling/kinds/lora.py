"""Per-task LoRA through peft: W' = W + (lora_alpha / r) * B A, W frozen; peft adapter name = slot."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError

if TYPE_CHECKING:
    from modeling.model import AdapterModel


@dataclasses.dataclass
class LoraKindConfig(KindConfig):
    r: int = 8  # rank of B (d x r) and A (r x k)
    lora_alpha: int = 16  # scaling numerator: delta = (lora_alpha / r) * B A
    lora_dropout: float = 0.1  # dropout on the LoRA branch input
    # Module names to adapt; None lets peft pick its default for the architecture
    # (query/value for BERT-like encoders, c_attn for GPT-2, q_proj/v_proj for Llama).
    target_modules: list[str] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise KindError(f"r={self.r} must be >= 1; set --set r=8 for example")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise KindError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")
        if isinstance(self.target_modules, str):
            self.target_modules = [m.strip() for m in self.target_modules.split(",") if m.strip()]


def _tuner_layers(model: "AdapterModel"):
    from peft.tuners.lora import LoraLayer

    return [m for m in model.encoder.modules() if isinstance(m, LoraLayer)]


class LoraKind(AdapterKind):
    name = "lora"
    config_cls = LoraKindConfig

    def peft_config(self, config: LoraKindConfig):
        from peft import LoraConfig

        return LoraConfig(
            r=config.r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            bias="none",
        )

    def resolved_target_modules(self, config: LoraKindConfig, model_type: str) -> list[str]:
        if config.target_modules:
            return list(config.target_modules)
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

        try:
            return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
        except KeyError:
            raise KindError(
                f"no default LoRA target modules for model type '{model_type}'; "
                f"set --set target_modules=name1,name2"
            ) from None

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        import warnings

        from peft import inject_adapter_in_model

        assert isinstance(config, LoraKindConfig)
        if not config.target_modules:
            config.target_modules = self.resolved_target_modules(config, model.encoder.config.model_type)
        try:
            with warnings.catch_warnings():  # several adapters in one model is the point here
                warnings.filterwarnings("ignore", message=".*multiple adapters.*")
                inject_adapter_in_model(self.peft_config(config), model.encoder, adapter_name=slot)
        except ValueError as err:
            raise KindError(f"LoRA: {str(err).splitlines()[0]}") from None

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        for layer in _tuner_layers(model):
            # A name the layer does not hold disables LoRA in it (peft skips unknown adapters).
            # Set the private field directly: peft's set_adapter also flips requires_grad,
            # and which parameters train is the trainer's decision, not inference's.
            layer._active_adapter = [slot] if slot in layer.lora_A else []

    def drop(self, model: "AdapterModel", slot: str) -> None:
        """Delete `slot`'s LoRA A/B modules from every peft layer (bounded inference hosts evict slots)."""
        from peft.functional import delete_adapter
        from peft.tuners.lora import LoraLayer

        delete_adapter(model.encoder, slot, prefix="lora_", layer_cls=LoraLayer)
        # peft makes another remaining adapter active when the active one is deleted; the model
        # records "no active slot" after a removal, so the layers must say the same.
        self.activate(model, None)

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model.encoder, adapter_name=slot).items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model.encoder, state, adapter_name=slot)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise KindError(f"LoRA weights do not fit the base model: unexpected keys {unexpected[:3]}")

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        params = []
        for layer in _tuner_layers(model):
            if slot in layer.lora_A:
                params += list(layer.lora_A[slot].parameters()) + list(layer.lora_B[slot].parameters())
        return params

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """r * (d_in + d_out) per adapted Linear; here computed from the base config's shapes."""
        assert isinstance(config, LoraKindConfig)
        from transformers import AutoModel

        with torch.device("meta"):
            encoder = AutoModel.from_config(base_config)
        targets = self.resolved_target_modules(config, base_config.model_type)
        total = 0
        for name, module in encoder.named_modules():
            if isinstance(module, nn.Linear) and name.split(".")[-1] in targets:
                total += config.r * (module.in_features + module.out_features)
        return total
