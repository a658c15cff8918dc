"""What kinds with a part shared across tasks have in common: share groups, who trains the shared
part, and its life cycle (made by a group's first slot, dropped with its last).

Shared-factor LoRA (one factor per targeted layer) and task-embedding adapters (f_in / f_out per
site) build on `SharedPartKind`; each says how to make, read and load its shared part and its per-slot
part, and the rules here (settings fixed per group, `train_shared`, the first slot always trains the
part it made) are written once.
"""
from __future__ import annotations

import dataclasses
from abc import abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError, SharedPartSettings
from modeling.kinds.hooks import HookedLayers

if TYPE_CHECKING:
    from modeling.model import AdapterModel


class SharedPartLayers(HookedLayers):
    """Layers of a shared-part kind: `shared[group]` is the group's shared part, `slot_config[slot]` the
    settings each slot was attached with (and so its group)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.ModuleDict()  # group -> the group's shared part
        self.slot_config: dict[str, Any] = {}  # slot -> its SharedPartSettings subclass
        self.group_config: dict[str, Any] = {}  # group -> the settings its shared part was made with
        # group -> the slot that made the group's shared part (that slot always trains it); None once the
        # shared part was loaded from elsewhere (it then trains only where train_shared is set).
        self.group_first: dict[str, str | None] = {}

    def group_of(self, slot: str) -> str:
        return self.slot_config[slot].share_group

    def made_shared(self, slot: str) -> bool:
        """Whether `slot` made its group's shared part (and so trains it at the full rate, whatever its settings)."""
        return self.group_first.get(self.group_of(slot)) == slot

    def trains_shared(self, slot: str) -> bool:
        """Whether training `slot` trains its group's shared part: with train_shared, or as the slot that made it."""
        return bool(self.slot_config[slot].train_shared) or self.made_shared(slot)


class SharedPartKind(AdapterKind):
    """Base of the kinds whose slots share a part per share group."""

    has_shared_part = True
    # Settings that shape the shared part: a later slot of a group must use the group's values.
    group_fields: ClassVar[tuple[str, ...]]

    # --- what each shared-part kind writes --------------------------------------------------------

    @abstractmethod
    def new_layers(self, model: "AdapterModel") -> SharedPartLayers:
        """Empty layers of this kind."""

    @abstractmethod
    def make_shared(self, model: "AdapterModel", config: SharedPartSettings) -> nn.Module:
        """A freshly initialised shared part for a new group with `config` (hooks its sites)."""

    @abstractmethod
    def attach_own(self, model: "AdapterModel", slot: str, config: SharedPartSettings) -> None:
        """Add `slot`'s per-slot part (its group's shared part exists already)."""

    @abstractmethod
    def drop_own(self, layers: SharedPartLayers, slot: str) -> None:
        """Remove `slot`'s per-slot part."""

    @abstractmethod
    def own_parameters(self, layers: SharedPartLayers, slot: str) -> list[nn.Parameter]:
        """`slot`'s per-slot parameters."""

    @abstractmethod
    def shared_state(self, layers: SharedPartLayers, group: str) -> dict[str, torch.Tensor]:
        """The group's shared weights, keyed `<dotted site name>.<param>` (stable across models)."""

    @abstractmethod
    def load_shared(self, layers: SharedPartLayers, group: str, state: dict[str, torch.Tensor]) -> None:
        """Load weights saved by `shared_state` into the group's shared part, refusing a mismatch."""

    # --- the contract's methods, once for every shared-part kind -----------------------------------

    def layers(self, model: "AdapterModel") -> SharedPartLayers:
        return super().layers(model)  # type: ignore[return-value]

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        assert isinstance(config, self.config_cls) and isinstance(config, SharedPartSettings)
        layers = self.layers(model)
        group = config.share_group
        known = layers.group_config.get(group)
        for field in self.group_fields if known is not None else ():
            if getattr(known, field) != getattr(config, field):
                raise KindError(
                    f"{self.name} share group '{group}' has {field}={getattr(known, field)}, this task asks for "
                    f"{field}={getattr(config, field)}; use the group's value or another --set share_group=NAME"
                )
        if known is None:
            try:
                layers.shared[group] = self.make_shared(model, config)
            except KindError:
                if not layers.slot_config:  # a refused first slot leaves no empty layers (nor hooks) behind
                    self.remove_layers(model)
                raise
            layers.group_config[group] = dataclasses.replace(config)
            layers.group_first[group] = slot
        layers.slot_config[slot] = config
        self.attach_own(model, slot, config)

    def drop(self, model: "AdapterModel", slot: str) -> None:
        layers = self.layers(model)
        group = layers.group_of(slot)
        self.drop_own(layers, slot)
        del layers.slot_config[slot]
        if layers.active == slot:
            layers.active = None
        if group not in {c.share_group for c in layers.slot_config.values()}:  # the group's last slot
            del layers.shared[group], layers.group_config[group], layers.group_first[group]
        if not layers.slot_config:
            self.remove_layers(model)

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        layers = self.layers(model)
        layers.active = slot if slot in layers.slot_config else None

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        layers = self.layers(model)
        params = self.own_parameters(layers, slot)
        if layers.trains_shared(slot):
            params += list(layers.shared[layers.group_of(slot)].parameters())
        return params

    def lr_scales(self, model: "AdapterModel", slot: str) -> dict[int, float]:
        layers = self.layers(model)
        config = layers.slot_config[slot]
        if not config.train_shared or layers.made_shared(slot) or config.shared_lr_scale == 1.0:
            return {}
        return {id(p): config.shared_lr_scale for p in layers.shared[layers.group_of(slot)].parameters()}

    def share_group_of(self, config: KindConfig) -> str:
        assert isinstance(config, SharedPartSettings)
        return config.share_group

    def renamed_share_group(self, config: KindConfig, group: str) -> KindConfig:
        return dataclasses.replace(config, share_group=group)  # validated again by __post_init__

    def shared_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        layers = self.layers(model)
        return self.shared_state(layers, layers.group_of(slot))

    def load_shared_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        layers = self.layers(model)
        group = layers.group_of(slot)
        self.load_shared(layers, group, state)
        layers.group_first[group] = None  # trained elsewhere: it trains here only where train_shared is set
