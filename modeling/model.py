"""The model: a frozen base encoder, per-task adapters (of any kind) and per-task heads.

One `AdapterModel` can hold many tasks at once: every kind keys its modules by slot, the heads
live in a ModuleDict keyed by slot, and `forward(..., slot=...)` activates one slot.  Training
wraps this module in a LightningModule (continual/), inference uses it directly (registry/).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from torch import nn

from modeling.kinds import KindConfig, get_kind


@dataclass
class SlotInfo:
    kind: str
    config: KindConfig
    labels: tuple[str, ...]
    # Base-encoder weights this slot trained (progressive unfreezing); saved with the adapter.
    base_state: dict[str, torch.Tensor] | None = None
    # Slots of the same kind whose adapters stay switched on, summed with this one's, whenever this slot
    # is active (O-LoRA: every earlier task's LoRA).  Only kinds with `stacks = True` honour it.
    stacked: tuple[str, ...] = ()


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Attention-masked mean over tokens: (B, T, H), (B, T) -> (B, H)."""
    mask = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class AdapterModel(nn.Module):
    def __init__(self, encoder: nn.Module, head_dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleDict()  # slot -> Linear(H, num_labels)
        # Kinds keep their modules here (e.g. adapter_modules["shared-b-lora"]), not inside the
        # encoder, so the encoder's own structure stays what peft and transformers expect; only LoRA's
        # live in the encoder, where peft injects them.
        self.adapter_modules = nn.ModuleDict()
        self.head_dropout = nn.Dropout(head_dropout)
        self.slots: dict[str, SlotInfo] = {}
        self.active_slot: str | None = None
        # Adding or removing a slot can change what the kinds have switched on (peft activates a freshly
        # injected adapter), so the next activate() sets every kind again, even for the same slot.
        self._activation_stale = True
        # forward() activates a slot on shared modules; concurrent predictors take turns.
        self.lock = threading.RLock()

    @property
    def hidden_size(self) -> int:
        config = self.encoder.config
        return getattr(config, "hidden_size", None) or getattr(config, "n_embd")

    def add_slot(self, slot: str, kind: str, config: KindConfig, labels: tuple[str, ...]) -> None:
        """Attach a fresh adapter of `kind` and a fresh head for `labels` under `slot`."""
        if slot in self.slots:
            raise ValueError(f"slot '{slot}' already exists in this model")
        get_kind(kind).attach(self, slot, config)
        head = nn.Linear(self.hidden_size, len(labels))
        # New modules follow the encoder's device and dtype.
        param = next(self.encoder.parameters())
        self.heads[slot] = head.to(device=param.device, dtype=param.dtype)
        self.slots[slot] = SlotInfo(kind, config, tuple(labels))
        self._activation_stale = True

    def stack(self, slot: str, others: tuple[str, ...] | list[str]) -> None:
        """Keep `others` (slots of the same kind) switched on, summed with `slot`'s adapter, whenever `slot`
        is active.  Refused for kinds that cannot sum adapters."""
        info = self.slots[slot]
        kind = get_kind(info.kind)
        if not kind.stacks:
            raise ValueError(f"adapter kind '{info.kind}' cannot keep other slots active with '{slot}'")
        wrong = [o for o in others if o not in self.slots or self.slots[o].kind != info.kind or o == slot]
        if wrong:
            raise ValueError(f"cannot stack {wrong} on '{slot}': each must be another '{info.kind}' slot of this model")
        info.stacked = tuple(others)
        self._activation_stale = True

    def remove_slot(self, slot: str) -> None:
        """Remove `slot`'s adapter (every module and hook its kind added) and its head."""
        info = self.slots.pop(slot)
        for other in self.slots.values():  # nothing may keep a removed slot switched on
            if slot in other.stacked:
                other.stacked = tuple(s for s in other.stacked if s != slot)
        get_kind(info.kind).drop(self, slot)
        del self.heads[slot]
        if self.active_slot == slot:
            self.active_slot = None
        self._activation_stale = True

    def activate(self, slot: str | None) -> None:
        """Switch every kind to `slot` (None: every kind off, the plain base encoder)."""
        if slot == self.active_slot and not self._activation_stale:
            return
        kinds = {info.kind for info in self.slots.values()}
        for kind in kinds:
            get_kind(kind).activate(self, slot if slot and self.slots[slot].kind == kind else None)
        self.active_slot = slot
        self._activation_stale = False

    def trainable_parameters(self, slot: str) -> list[nn.Parameter]:
        info = self.slots[slot]
        return get_kind(info.kind).trainable_parameters(self, slot) + list(self.heads[slot].parameters())

    def lr_scales(self, slot: str) -> dict[int, float]:
        """id(param) -> LR factor the slot's adapter kind asks for (the others train at the configured LR)."""
        return get_kind(self.slots[slot].kind).lr_scales(self, slot)

    def begin_training(self, slot: str):
        """Tell the slot's adapter kind that training starts; the loss term it adds (None: none).  See
        AdapterKind.begin_training."""
        return get_kind(self.slots[slot].kind).begin_training(self, slot)

    def embed(self, slot: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Pooled sentence representation (B, H) of the inputs under `slot`'s adapter."""
        self.activate(slot)
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **extra}
        hidden, mask = get_kind(self.slots[slot].kind).encode(self, slot, inputs)
        return mean_pool(hidden, mask)

    def forward(self, slot: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Class logits (B, num_labels of slot)."""
        pooled = self.embed(slot, input_ids, attention_mask, **extra)
        return self.heads[slot](self.head_dropout(pooled))
