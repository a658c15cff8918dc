"""Progressive unfreezing: base layers unfrozen top-down on a schedule, with layer-wise learning rates.

θ_frozen ⊂ θ_partial ⊂ θ_all (Howard & Ruder 2018, ULMFiT): training starts with only the adapter and
head; every `every` epochs (or steps) the next `group` encoder layers, from the top down, start
training too, each at a learning rate that decays with depth (Clark et al. 2020, ELECTRA's layer-wise
decay: the adapter and head at the base lr, the top layer at base·decay, the next at base·decay², ...).

Schedule spec, for `--set unfreeze_schedule=...`: comma-separated key=value pairs, any order, all optional:

    every=1,unit=epoch,group=2,lr_decay=0.8,max_layers=4

    every       whole number >= 1: one more group every `every` units (the first at t = every)   [1]
    unit        epoch | step                                                                       [epoch]
    group       whole number >= 1: layers unfrozen at a time                                       [1]
    lr_decay    number in (0, 1]: layer-wise learning-rate factor                                  [1.0]
    max_layers  whole number >= 1: never unfreeze more than this many top layers (default: all)

"none" (or an empty value) turns unfreezing off.  The embeddings always stay frozen.

Kept as pure functions (`layers_to_unfreeze`, `layerwise_lr`, `parse_unfreeze_schedule`) under a thin
Lightning callback, like Avalanche's plugins over separately tested functions.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import lightning as L
import torch
from torch import nn

from modeling.base_layers import base_parameters, load_unfrozen_base_state, unfrozen_base_state  # noqa: F401
from tasks.errors import ContinualError

EXAMPLE = "--set unfreeze_schedule=every=1,unit=epoch,group=2,lr_decay=0.8"


class UnfreezeError(ContinualError):
    pass


@dataclasses.dataclass(frozen=True)
class UnfreezeSchedule:
    every: int = 1  # one more layer group every `every` units; the first group at t = every
    unit: str = "epoch"  # what t counts: "epoch" or "step" (optimizer steps)
    group: int = 1  # layers unfrozen at a time, top layer first
    lr_decay: float = 1.0  # layer-wise lr factor per layer of depth below the adapter (1.0 = no decay)
    max_layers: int | None = None  # most top layers ever unfrozen; None = all of them

    def __post_init__(self) -> None:
        for name in ("every", "group") + (("max_layers",) if self.max_layers is not None else ()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UnfreezeError(f"unfreeze_schedule {name}={value!r} must be a whole number >= 1; e.g. {EXAMPLE}")
        if self.unit not in ("epoch", "step"):
            raise UnfreezeError(f"unfreeze_schedule unit={self.unit!r} must be epoch or step; e.g. {EXAMPLE}")
        if not 0.0 < self.lr_decay <= 1.0:
            raise UnfreezeError(f"unfreeze_schedule lr_decay={self.lr_decay!r} must be in (0, 1]; e.g. {EXAMPLE}")

    def to_spec(self) -> str:
        """The spec string that parses back to this schedule (what training records)."""
        parts = [f"every={self.every}", f"unit={self.unit}", f"group={self.group}", f"lr_decay={self.lr_decay:g}"]
        return ",".join(parts + ([f"max_layers={self.max_layers}"] if self.max_layers is not None else []))


def parse_unfreeze_schedule(spec: str | None) -> UnfreezeSchedule | None:
    """Parse `every=1,unit=epoch,group=2,lr_decay=0.8` (see the module doc); None for "none" or empty."""
    if spec is None or spec.strip().lower() in ("", "none", "off"):
        return None
    fields = {f.name: f for f in dataclasses.fields(UnfreezeSchedule)}
    values: dict[str, object] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, sep, raw = part.partition("=")
        key, raw = key.strip(), raw.strip()
        if not sep or key not in fields or not raw:
            raise UnfreezeError(
                f"unfreeze_schedule={spec!r}: bad part {part!r}; write key=value pairs with keys "
                f"{', '.join(fields)}, e.g. {EXAMPLE}"
            )
        if key in values:
            raise UnfreezeError(f"unfreeze_schedule={spec!r} sets {key} twice; e.g. {EXAMPLE}")
        try:
            values[key] = raw if key == "unit" else float(raw) if key == "lr_decay" else int(raw)
        except ValueError:
            kind = "a number" if key == "lr_decay" else "a whole number"
            raise UnfreezeError(f"unfreeze_schedule={spec!r}: {key}={raw!r} is not {kind}; e.g. {EXAMPLE}") from None
    return UnfreezeSchedule(**values)  # type: ignore[arg-type]


def layers_to_unfreeze(step_or_epoch: int, schedule: UnfreezeSchedule, num_layers: int) -> list[int]:
    """Indices of the encoder layers that train at time t (cumulative, top layer first).

    e.g. every=2, group=1, 4 layers: t=0,1 -> []; t=2,3 -> [3]; t=4 -> [3, 2]; t>=8 -> [3, 2, 1, 0].
    """
    if step_or_epoch < 0 or num_layers < 0:
        raise ValueError(f"t={step_or_epoch} and num_layers={num_layers} must be >= 0")
    limit = num_layers if schedule.max_layers is None else min(schedule.max_layers, num_layers)
    count = min(limit, (step_or_epoch // schedule.every) * schedule.group)
    return list(range(num_layers - 1, num_layers - 1 - count, -1))


def layerwise_lr(base_lr: float, layer_index: int, num_layers: int, decay: float) -> float:
    """base_lr · decay^(num_layers − layer_index): the top layer (num_layers − 1) gets base_lr · decay."""
    if not 0 <= layer_index < num_layers:
        raise ValueError(f"layer_index={layer_index} is outside 0..{num_layers - 1}")
    return base_lr * decay ** (num_layers - layer_index)


# --- the encoder's layers ------------------------------------------------------------------------


def encoder_layers(encoder: nn.Module) -> nn.ModuleList:
    """The stack of transformer blocks, bottom first (BERT encoder.layer, GPT-2 h, Llama layers)."""
    n = encoder.config.num_hidden_layers
    for module in encoder.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise UnfreezeError(f"cannot find the {n} transformer layers of this base model; turn unfreezing off with "
                        f"--set unfreeze_schedule=none")


# --- the callback --------------------------------------------------------------------------------


def _extend_scheduler(scheduler: object, base_lr: float, current_lr: float) -> None:
    """Keep a scheduler's per-group lists in step with a param group added to its optimizer.

    LambdaLR/MultiplicativeLR zip `lr_lambdas` with `base_lrs` and the param groups: without this a new
    group would silently keep its first lr.  A new group follows group 0's lambda (the same warm-up/decay).
    """
    if hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs.append(base_lr)
    if hasattr(scheduler, "lr_lambdas"):
        scheduler.lr_lambdas.append(scheduler.lr_lambdas[0])
    if isinstance(getattr(scheduler, "_last_lr", None), list):
        scheduler._last_lr.append(current_lr)


class ProgressiveUnfreezing(L.Callback):
    """Unfreeze encoder layers per `layers_to_unfreeze` into the running optimizer.

    New layers join the EXISTING optimizer with `add_param_group` (the adapter's Adam moments are kept),
    one group per layer at its layer-wise lr, split into decay / no-decay like the first groups.
    The base encoder is changed in place: save `unfrozen_base_state(model)` with the adapter.
    """

    def __init__(self, schedule: UnfreezeSchedule,
                 encoder_of: Callable[[L.LightningModule], nn.Module] = lambda module: module.model.encoder):
        self.schedule = schedule
        self.encoder_of = encoder_of
        self.unfrozen: list[int] = []  # layer indices unfrozen so far, in order

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._apply(trainer, pl_module, trainer.current_epoch if self.schedule.unit == "epoch" else trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.schedule.unit == "epoch":
            self._apply(trainer, pl_module, trainer.current_epoch)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self.schedule.unit == "step":
            self._apply(trainer, pl_module, trainer.global_step)

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule, t: int) -> None:
        from continual.optim import param_groups  # the project's decay / no-decay rule

        layers = encoder_layers(self.encoder_of(pl_module))
        new = [i for i in layers_to_unfreeze(t, self.schedule, len(layers)) if i not in self.unfrozen]
        if not new:
            return
        optimizer = trainer.optimizers[0]
        first = optimizer.param_groups[0]
        base_lr = first.get("initial_lr", first["lr"])
        ratio = first["lr"] / base_lr if base_lr else 1.0  # where the lr schedule is now
        weight_decay = max(g.get("weight_decay", 0.0) for g in optimizer.param_groups)
        known = {id(p) for g in optimizer.param_groups for p in g["params"]}
        schedulers = [c.scheduler for c in trainer.lr_scheduler_configs if c.scheduler.optimizer is optimizer]
        for i in new:
            lr = layerwise_lr(base_lr, i, len(layers), self.schedule.lr_decay)
            named = [(n, p) for n, p in base_parameters(layers[i]) if id(p) not in known]
            for _, p in named:
                p.requires_grad_(True)
            for group in param_groups(named, lr, weight_decay):
                group.update(initial_lr=lr, lr=lr * ratio)
                optimizer.add_param_group(group)
                for scheduler in schedulers:
                    _extend_scheduler(scheduler, lr, lr * ratio)
            self.unfrozen.append(i)
