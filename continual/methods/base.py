"""What a continual-learning method is to the sequence runner, and the training step the baselines share.

A method decides three things: how a task's slot (adapter + head) starts (`add_slot`), how it trains
(`train`, or `train_all` for joint training) and whether the result is registered as an adapter
version.  The runner (`continual.sequence`) does everything else: the accuracy matrix, evaluation,
MLflow logging.  Every task of a sequence lives in ONE `AdapterModel` (`SequenceContext.model`).
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import lightning as L

from continual.config import TrainConfig
from continual.data import subsample
from modeling.base_model import BaseModel
from modeling.kinds import get_kind
from modeling.model import AdapterModel
from registry import tags as T
from registry.registry import AdapterRegistry, AdapterVersion
from tasks.errors import ContinualError
from tasks.loaders import Example

if typing.TYPE_CHECKING:
    from continual.train import TaskData


class MethodError(ContinualError):
    pass


@dataclass
class SequenceContext:
    """Everything a method needs while the runner walks a sequence."""

    registry: AdapterRegistry
    base: BaseModel
    model: AdapterModel  # the one model every task of the sequence lives in
    config: TrainConfig
    data: dict[str, "TaskData"]  # task -> its splits
    tasks: list[str]  # the sequence, in order
    sequence: str  # sequence name (run tags)
    method: str  # method name (run tags)
    parent_run_id: str
    base_model: str | None = None  # as the sequence file gave it (None: the default base model)
    show_progress: bool = False
    init_sources: dict[str, str] = dataclasses.field(default_factory=dict)  # task -> version ref to warm-start from

    def train_examples(self, task: str) -> list[Example]:
        """The task's training examples after `train_limit` (the same ones train_task uses)."""
        return subsample(self.data[task].train, self.config.train_limit, self.config.seed)

    def tags(self, **extra: str) -> dict[str, str]:
        return {T.SEQUENCE: self.sequence, T.METHOD: self.method, **extra}


@dataclass
class StepOutcome:
    """One training step of a sequence: its nested run and, when registered, the version it made."""

    run_id: str
    version: AdapterVersion | None
    seconds: float
    steps: int
    shared_ref: str | None = None  # registered version whose weights hold the shared part now in force


@dataclass
class NoSettings:
    pass


def parse_settings(cls: type, options: dict[str, Any], method: str) -> Any:
    """The method's own settings (a dataclass) from the sequence's `config`, coerced to the field types."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name not in options or options[f.name] is None:
            continue
        raw, hint = options[f.name], hints[f.name]
        try:
            values[f.name] = hint(raw) if hint in (int, float) else str(raw) if hint is str else raw
        except (TypeError, ValueError):
            raise MethodError(f"method {method}: {f.name}={raw!r} is not a valid {hint.__name__} "
                              f"(sequence file `config:`)") from None
    return cls(**values)


class Method:
    """Base of every method.  Subclasses set `name`, `kind` (the adapter kind of each slot) and override
    `train` (or `train_all` when `joint`)."""

    name: ClassVar[str]
    settings_cls: ClassVar[type] = NoSettings
    joint: ClassVar[bool] = False  # trains once on all tasks (mtl): only the last row of R exists
    registers: ClassVar[bool] = True  # registers one adapter version per task
    # How this method's versions relate to what was evaluated (a run tag, so the registry stays honest).
    registration: ClassVar[str] = "one adapter version per task"

    kind: str  # the adapter kind of every slot this method adds (set by each subclass)

    def __init__(self, settings: Any = None):
        self.settings = settings if settings is not None else self.settings_cls()

    @classmethod
    def setting_names(cls) -> set[str]:
        """Keys of the sequence's `config` that are this method's own settings (not TrainConfig's)."""
        return {f.name for f in dataclasses.fields(cls.settings_cls)}

    def add_slot(self, ctx: SequenceContext, task: str) -> None:
        """Add `task`'s slot to `ctx.model` exactly as its training starts it (seeded, so repeatable)."""
        L.seed_everything(ctx.config.seed, workers=True, verbose=False)
        kind_config = get_kind(self.kind).make_config(self.kind_settings(ctx, task))
        ctx.model.add_slot(task, self.kind, kind_config, ctx.data[task].spec.labels)
        source = ctx.init_sources.get(task)
        if source is not None:  # `init_from: related`: start as its training will, from the chosen adapter
            from continual.warm_start import warm_start

            warm_start(ctx.registry, ctx.model, task, ctx.base, ctx.registry.resolve(source))

    def kind_settings(self, ctx: SequenceContext, task: str) -> dict[str, Any]:
        """The settings `task`'s slot is configured from (osf overrides one per task)."""
        return ctx.config.flat()

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        raise NotImplementedError

    def train_all(self, ctx: SequenceContext) -> StepOutcome:
        raise NotImplementedError


def run_nested(ctx: SequenceContext, task: str, fit: Callable[[Any], tuple[int, float | None]], *,
               register: bool, run_name: str | None = None, params: dict[str, Any] | None = None,
               extra_tags: dict[str, str] | None = None) -> StepOutcome:
    """Train `task`'s slot with `fit(run) -> (steps, best dev)` in a run nested under the sequence's,
    evaluate it and (if `register`) register it: `continual.train.run_training`, the one run lifecycle."""
    from continual.train import run_training

    tags = ctx.tags(**{T.RUN_TASK: task, T.ADAPTER_KIND: ctx.model.slots[task].kind, **(extra_tags or {})})
    outcome = run_training(
        ctx.registry, fit, model=ctx.model, slot=task, base=ctx.base, config=ctx.config, data=ctx.data[task],
        run_name=run_name or f"train-{task}", tags=tags, parent=ctx.parent_run_id, register=register,
        extra_tags=ctx.tags(**(extra_tags or {})),
        params={"method": ctx.method, "task": task, "train_examples": len(ctx.train_examples(task)), **(params or {})})
    return StepOutcome(outcome.run_id, outcome.version, outcome.seconds, outcome.steps)
