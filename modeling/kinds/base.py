"""The contract every adapter kind implements, and the registry of kinds.

A kind adds per-task modules to an `AdapterModel` (keyed by a *slot* name: the task name while
training, `task__vN...` when a version is loaded for inference), switches which slot is active,
saves/loads a slot's weights and removes a slot again.  Kinds are plain objects registered with one
explicit `register_kind` call each, like peft's `register_peft_method`.

Every abstract method of `AdapterKind` is what a new kind must write; the methods with a body are
the defaults for a kind that neither changes the encoder's inputs, nor can tie two slots, nor has a
part shared across tasks.  Kinds with a shared part (shared-factor LoRA, task-embedding adapters)
set `has_shared_part`, give their config the `SharedPartSettings` fields and build on
`modeling.kinds.shared.SharedPartKind`.  Code outside `modeling/kinds` reaches a kind's modules only
through these methods: never through peft's layers or a kind's `adapter_modules` entry.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, ClassVar

import torch
from torch import nn

from tasks.errors import ContinualError

if TYPE_CHECKING:
    from torch.utils.hooks import RemovableHandle

    from modeling.model import AdapterModel


class KindError(ContinualError):
    pass


@dataclasses.dataclass
class KindConfig:
    """Base of every kind's settings; saved as JSON next to the weights."""

    def __post_init__(self) -> None:
        """Validate the settings (one-line errors naming the `--set` flag); subclasses extend it and call super()."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "KindConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise KindError(f"unknown {cls.__name__} setting(s) {unknown}; valid: {sorted(names)}")
        return cls(**data)


@dataclasses.dataclass
class SharedPartSettings(KindConfig):
    """The settings of every kind with a part shared across tasks (its config class extends this one)."""

    share_group: str = "default"  # tasks of one group share one shared part
    # Keep training the shared part with every new task of the group (earlier tasks may then forget);
    # False freezes it after the group's first task, which leaves earlier tasks bit-identical.
    train_shared: bool = True
    # With train_shared, a later task trains the shared part at learning_rate x this (its own part at the
    # full rate): the shared part moves slowly, so earlier tasks forget little (the group's first task, which
    # creates the shared part, trains it at the full rate)
    shared_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.shared_lr_scale <= 1:
            raise KindError(f"shared_lr_scale={self.shared_lr_scale} must be in (0, 1]; set --set shared_lr_scale=0.1")
        # "." would split a ModuleDict key; the registry names the shared part "<kind>--<group>".
        if not self.share_group or "." in self.share_group:
            raise KindError(f"share_group={self.share_group!r} must be a non-empty name without '.'; "
                            f"set --set share_group=default")


class KindLayers(nn.Module):
    """Base of the module a kind keeps in `model.adapter_modules[kind.name]` (its *layers*).

    `active` is the slot the encoder hooks serve (None: off).  Hooks a kind registers on the encoder
    for these layers are recorded here, so `AdapterKind.remove_layers` takes them off with the layers.
    """

    def __init__(self) -> None:
        super().__init__()
        self.active: str | None = None
        self.hook_handles: list["RemovableHandle"] = []  # filled by modeling.kinds.hooks.add_kind_hook

    def remove_hooks(self) -> None:
        for handle in self.hook_handles:
            handle.remove()
        self.hook_handles.clear()


class AdapterKind(ABC):
    name: ClassVar[str]
    config_cls: ClassVar[type[KindConfig]]
    # True for kinds whose config extends SharedPartSettings and whose slots share a part per share
    # group (register_kind checks the two agree); the shared-part methods below are then real.
    has_shared_part: ClassVar[bool] = False
    # How training starts the head when head_init=auto: "fresh" (random) or "probe" (a linear probe on the
    # slot's frozen features, LP-FT), for kinds whose per-task part is too small to undo a random head.
    default_head_init: ClassVar[str] = "fresh"
    # True for kinds whose `activate` also switches on the slots in `model.slots[slot].stacked`, summing
    # their adapters with the active one's (peft LoRA can; see AdapterModel.stack).
    stacks: ClassVar[bool] = False

    def make_config(self, settings: dict[str, Any]) -> KindConfig:
        """This kind's config from a flat dict of TrainConfig settings (unknown keys ignored)."""
        names = {f.name for f in dataclasses.fields(self.config_cls)}
        return self.config_cls(**{k: v for k, v in settings.items() if k in names})

    # --- what every kind implements ---------------------------------------------------------------

    @abstractmethod
    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        """Add freshly initialised per-slot modules for `slot` to `model` (in place)."""

    @abstractmethod
    def drop(self, model: "AdapterModel", slot: str) -> None:
        """Remove everything `attach(model, slot, ...)` added: after attach then drop, the model's modules,
        parameters and encoder outputs are what they were before (a shared part goes with its group's last slot)."""

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

    # --- defaults a kind may override -------------------------------------------------------------

    def lr_scales(self, model: "AdapterModel", slot: str) -> dict[int, float]:
        """id(param) -> factor on the learning rate for some of `slot`'s trainable parameters (none by default)."""
        return {}

    def begin_training(self, model: "AdapterModel", slot: str) -> Callable[[], torch.Tensor] | None:
        """Called as training of `slot` starts: ready the slot's state for training (hyper-lora gives a
        warm-started slot its bank column) and return a term the kind adds to the loss (a callable () ->
        scalar tensor; hyper-lora's output regulariser), or None."""
        return None

    def encode(
        self, model: "AdapterModel", slot: str, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the encoder for `slot`: (last hidden states (B, T, H), attention mask (B, T)).

        Kinds that change the inputs (prompt tuning) or use their own encoder (full fine-tuning)
        override this.
        """
        out = model.encoder(**inputs)
        return out.last_hidden_state, inputs["attention_mask"]

    def tie(self, model: "AdapterModel", slot: str, source_slot: str) -> None:
        """Make `slot` (already attached) compute with `source_slot`'s very modules, not copies, so training
        either moves both (the sequential fine-tuning baselines).  Kinds that can't tie refuse."""
        raise KindError(f"adapter kind '{self.name}' cannot tie slot '{slot}' to '{source_slot}'; "
                        f"kinds that can: {', '.join(k.name for k in KINDS.values() if type(k).tie is not AdapterKind.tie)}")

    # --- the part shared across tasks (kinds with has_shared_part; see modeling/kinds/shared.py) ---
    # The shared part lives in the model once per *share group* (`SharedPartSettings.share_group`),
    # e.g. one B per targeted layer for all tasks of the group.  The registry stores each version of a
    # shared part as a registered model of its own and, when it loads a task for inference, moves the
    # slot to a per-version group (`renamed_share_group`), so tasks trained against different versions
    # of the shared part can be served side by side.

    def share_group_of(self, config: KindConfig) -> str | None:
        """The share group a slot with `config` joins; None for kinds without a shared part."""
        return None

    def renamed_share_group(self, config: KindConfig, group: str) -> KindConfig:
        """A copy of `config` that joins share group `group` instead."""
        raise KindError(f"adapter kind '{self.name}' has no shared part, so no share group to rename")

    def shared_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        """Weights of the shared part `slot` uses ({} for kinds without one)."""
        return {}

    def load_shared_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        """Load shared weights into the share group `slot` belongs to."""
        raise KindError(f"adapter kind '{self.name}' has no shared part to load {len(state)} shared weight(s) into")

    def shared_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """Closed-form count of the shared part's parameters, once per share group (0 without one)."""
        return 0

    # --- helpers for kinds that keep their modules in model.adapter_modules -----------------------

    def new_layers(self, model: "AdapterModel") -> nn.Module:
        """An empty module to hold this kind's modules in `model` (called once per model by `layers`)."""
        raise KindError(f"adapter kind '{self.name}' keeps no modules in adapter_modules")

    def layers(self, model: "AdapterModel") -> nn.Module:
        """This kind's modules in `model` (`model.adapter_modules[self.name]`), made on first use."""
        if self.name not in model.adapter_modules:
            model.adapter_modules[self.name] = self.new_layers(model)
        return model.adapter_modules[self.name]

    def drop_from(self, model: "AdapterModel", slots: nn.ModuleDict, slot: str) -> None:
        """`drop` for a kind whose slots are the keys of `slots` (a ModuleDict in its layers): delete `slot`,
        switch it off, and take the layers out with the last slot."""
        del slots[slot]
        layers = self.layers(model)
        if isinstance(layers, KindLayers) and layers.active == slot:
            layers.active = None
        if not len(slots):
            self.remove_layers(model)

    def remove_layers(self, model: "AdapterModel") -> None:
        """Take this kind's layers, and the encoder hooks registered for them, out of `model` (its last slot went)."""
        if self.name not in model.adapter_modules:
            return
        layers = model.adapter_modules.pop(self.name)
        if isinstance(layers, KindLayers):
            layers.remove_hooks()


KINDS: dict[str, AdapterKind] = {}


def register_kind(kind: AdapterKind) -> None:
    if kind.name in KINDS:
        raise ValueError(f"adapter kind '{kind.name}' is already registered")
    if kind.has_shared_part != issubclass(kind.config_cls, SharedPartSettings):
        extends = "does not extend" if kind.has_shared_part else "extends"
        raise ValueError(f"adapter kind '{kind.name}': has_shared_part={kind.has_shared_part} but its config "
                         f"{kind.config_cls.__name__} {extends} SharedPartSettings")
    KINDS[kind.name] = kind


def get_kind(name: str) -> AdapterKind:
    try:
        return KINDS[name]
    except KeyError:
        raise KindError(
            f"unknown adapter kind '{name}'; choose one of: {', '.join(sorted(KINDS))}"
        ) from None
