"""Full fine-tuning: every encoder weight trains, on a private per-slot copy of the encoder.

The copy lives in adapter_modules["full"][slot] and `encode` runs it, so several fully fine-tuned
tasks can be served from one process next to adapter slots that share the frozen base encoder.
The copy is the plain base encoder: peft LoRA layers are unwrapped to their base Linear and the
hooks other kinds put on the shared encoder are removed, so other slots never leak into it.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError
from modeling.kinds.hooks import meta_encoder

if TYPE_CHECKING:
    from modeling.model import AdapterModel


@dataclasses.dataclass
class FullConfig(KindConfig):
    """No settings: the whole encoder trains (learning rate and schedule are training settings)."""


def plain_copy(encoder: nn.Module) -> nn.Module:
    """A deep copy of `encoder` without peft LoRA layers or this package's hooks, all weights trainable."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    clone = copy.deepcopy(encoder)
    for name, module in list(clone.named_modules()):
        if isinstance(module, BaseTunerLayer):  # peft layer -> the Linear it wraps (same weights)
            parent_name, _, child = name.rpartition(".")
            setattr(clone.get_submodule(parent_name), child, module.get_base_layer())
    for module in clone.modules():
        for hooks in (module._forward_hooks, module._forward_pre_hooks):
            for handle_id, fn in list(hooks.items()):
                if getattr(fn, "__module__", "").startswith("modeling.kinds"):
                    del hooks[handle_id]
                    module._forward_hooks_with_kwargs.pop(handle_id, None)
                    module._forward_pre_hooks_with_kwargs.pop(handle_id, None)
                    module._forward_hooks_always_called.pop(handle_id, None)
    return clone.requires_grad_(True)


class FullFineTuningKind(AdapterKind):
    name = "full"
    config_cls = FullConfig
    modifies_base = True

    def _layers(self, model: "AdapterModel") -> nn.ModuleDict:
        if self.name not in model.adapter_modules:
            model.adapter_modules[self.name] = nn.ModuleDict()  # slot -> encoder copy
        return model.adapter_modules[self.name]  # type: ignore[return-value]

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        self._layers(model)[slot] = plain_copy(model.encoder)

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        pass  # encode() picks the slot's own encoder; nothing in the shared encoder to switch

    def encode(self, model: "AdapterModel", slot: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._layers(model)[slot](**inputs).last_hidden_state, inputs["attention_mask"]

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self._layers(model)[slot].state_dict().items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        try:
            self._layers(model)[slot].load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise KindError(f"full fine-tuning weights do not fit this base model: {str(err).splitlines()[0]}") from None

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return list(self._layers(model)[slot].parameters())

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Every encoder parameter (for BERT: embeddings + L·(4H² + 2HF + 9H + F) + pooler H² + H)."""
        return sum(p.numel() for p in meta_encoder(base_config).parameters())

    def drop(self, model: "AdapterModel", slot: str) -> None:
        del self._layers(model)[slot]
