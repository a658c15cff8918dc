"""Full fine-tuning: every encoder weight trains, on a private per-slot copy of the encoder.

The copy lives in adapter_modules["full"][slot] and `encode` runs it, so several fully fine-tuned
tasks can be served from one process next to adapter slots that share the frozen base encoder.
The copy is the plain base encoder: peft LoRA layers are unwrapped to their base Linear and the
hooks other kinds put on the shared encoder (`add_kind_hook`) are removed, so other slots never leak
into it.  The base encoder itself is never changed.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import meta_encoder, strip_kind_hooks
from modeling.kinds.lora import unwrap_peft_layers

if TYPE_CHECKING:
    from modeling.model import AdapterModel


@dataclasses.dataclass
class FullConfig(KindConfig):
    """No settings: the whole encoder trains (learning rate and schedule are training settings)."""


def plain_copy(encoder: nn.Module) -> nn.Module:
    """A deep copy of `encoder` without peft LoRA layers or this package's hooks, all weights trainable."""
    clone = copy.deepcopy(encoder)
    unwrap_peft_layers(clone, only_empty=False)  # peft layer -> the Linear it wraps (same weights)
    strip_kind_hooks(clone)  # the hooks other slots' kinds put on the shared encoder (add_kind_hook marks them)
    return clone.requires_grad_(True)


class FullFineTuningKind(AdapterKind):
    name = "full"
    config_cls = FullConfig

    def new_layers(self, model: "AdapterModel") -> nn.ModuleDict:
        return nn.ModuleDict()  # slot -> encoder copy

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        self.layers(model)[slot] = plain_copy(model.encoder)

    def drop(self, model: "AdapterModel", slot: str) -> None:
        self.drop_from(model, self.layers(model), slot)

    def tie(self, model: "AdapterModel", slot: str, source_slot: str) -> None:
        layers = self.layers(model)
        for s in (slot, source_slot):
            if s not in layers:
                raise KindError(f"slot '{s}' has no full fine-tuning encoder; full slots: {sorted(layers)}")
        layers[slot] = layers[source_slot]

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        pass  # encode() picks the slot's own encoder; nothing in the shared encoder to switch

    def encode(self, model: "AdapterModel", slot: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.layers(model)[slot](**inputs).last_hidden_state, inputs["attention_mask"]

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.layers(model)[slot].state_dict().items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        try:
            self.layers(model)[slot].load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise KindError(f"full fine-tuning weights do not fit this base model: {str(err).splitlines()[0]}") from None

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return list(self.layers(model)[slot].parameters())

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Every encoder parameter (for BERT: embeddings + L·(4H² + 2HF + 9H + F) + pooler H² + H)."""
        return sum(p.numel() for p in meta_encoder(base_config).parameters())
