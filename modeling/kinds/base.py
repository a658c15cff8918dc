"""The contract every adapter kind implements, and the registry of kinds.

A kind adds per-task modules to an `AdapterModel` (keyed by a *slot* name: the task name while
training, `task__vN` when a version is loaded for inference), switches which slot is active, and
saves/loads a slot's weights.  Kinds whose parameters are shared across tasks (shared-B LoRA,
task-embedding adapters) also expose a shared state.  Kinds are plain objects registered with one
explicit `register_kind` call each, like peft's `register_peft_method`.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from tasks.errors import ContinualError

if TYPE_CHECKING:
    from modeling.model import AdapterModel


class KindError(ContinualError):
    pass


@dataclasses.dataclass
class KindConfig:
    """Base of every kind's settings; saved as JSON next to the weights."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KindConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KindError(f"unknown {cls.__name__} setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**data)


class AdapterKind(ABC):
    name: ClassVar[str]
    config_cls: ClassVar[type[KindConfig]]
    # True when training changes base-model weights (full fine-tuning): training then works on a
    # private copy of the encoder instead of the process-wide shared one.
    modifies_base: ClassVar[bool] = False

    def make_config(self, settings: dict[str, Any]) -> KindConfig:
        """This kind's config from a flat dict of TrainConfig settings (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        return self.config_cls(**{k: v for k, v in settings.items() if k in names})

    @abstractmethod
    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        """Add freshly initialised per-slot modules for `slot` to `model` (in place)."""

    @abstractmethod
    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        """Make `slot` the adapter used by forward; None (or a slot of another kind) disables this kind."""

    @abstractmethod
    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        """The per-slot weights to save (keys relative, stable across slots)."""

    @abstractmethod
    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by `slot_state_dict` (possibly from another slot name) into `slot`."""

    @abstractmethod
    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        """Parameters that training `slot` updates (the head is added by the model)."""

    @abstractmethod
    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Closed-form count of per-task adapter parameters (head excluded), for a base config."""

    def encode(
        self, model: "AdapterModel", slot: str, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder for `slot`: (last hidden states (B, T, H), attention mask (B, T)).

        Kinds that change the inputs (prompt tuning) or use their own encoder (full fine-tuning)
        override this.
        """
        out = model.encoder(**inputs)
        return out.last_hidden_state, inputs["attention_mask"]

    def drop(self, model: "AdapterModel", slot: str) -> None:
        """Remove `slot`'s modules (optional; default keeps them)."""

    # --- Kinds with a part shared across tasks (shared-B LoRA, task-embedding adapters) ---------
    # The shared part lives in the model once per *share group* (config field `share_group`),
    # e.g. one B per targeted layer for all tasks of the group.  The registry stores each version
    # of a shared part as a registered model of its own and, when it loads a task for inference,
    # sets `share_group` to a per-version name ("<group>__v3") so tasks trained against different
    # versions of the shared part can be served side by side.

    def shared_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        """Weights of the shared part `slot` uses ({} for kinds without one)."""
        return {}

    def load_shared_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        """Load shared weights into the share group `slot` belongs to."""


KINDS: dict[str, AdapterKind] = {}


def register_kind(kind: AdapterKind) -> None:
    if kind.name in KINDS:
        raise ValueError(f"adapter kind '{kind.name}' is already registered")
    KINDS[kind.name] = kind


def get_kind(name: str) -> AdapterKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KindError(
            f"unknown adapter kind '{name}'; choose one of: {', '.join(sorted(KINDS))}"
        ) from None
