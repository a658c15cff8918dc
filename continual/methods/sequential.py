"""Sequential fine-tuning baselines: ONE adapter trained on through every task, one head per task.

    seq-lora  one LoRA (peft) shared by every task of the sequence
    seq-ft    full fine-tuning: one trainable copy of the encoder shared by every task

Each task still has a slot of its own (kind `lora` or `full`), but the slots are *tied*
(`AdapterKind.tie`): a new task's slot points at the very modules of the sequence's first slot, so
there is one tensor per shared weight and training task i moves what tasks 0..i-1 are evaluated
with.  That is what makes forgetting visible next to per-task adapters.

Registration: the version of task i is an ordinary `lora`/`full` adapter holding the shared weights
as they are after task i plus task i's head (loadable with `AdapterRegistry.load`); evaluating task
j < i later uses the newer shared weights, which the accuracy matrix records (`shared`).
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from continual.methods.base import Method, MethodError, SequenceContext, StepOutcome, run_nested
from modeling.kinds import get_kind

SHARED_KINDS = ("lora", "full")


@dataclass
class SharedSettings:
    shared_kind: str = "lora"  # the one adapter every task trains: lora (peft LoRA) or full (the whole encoder)

    def __post_init__(self) -> None:
        if self.shared_kind not in SHARED_KINDS:
            raise MethodError(f"shared_kind={self.shared_kind!r} is invalid; choose one of {', '.join(SHARED_KINDS)} "
                              f"(sequence file `config: {{shared_kind: lora}}`)")


class SharedAdapterMethod(Method):
    """Every task's slot is tied to the first one; subclasses change how a task trains."""

    registration = ("one version per task: the shared adapter's weights after that task plus the task's head; "
                    "later tasks move the shared weights")
    fixed_kind: str | None = None  # seq-lora / seq-ft fix it; ewc, replay and mtl take `shared_kind`

    def __init__(self, settings=None):
        super().__init__(settings)
        self.kind = self.fixed_kind or self.settings.shared_kind
        self.first: str | None = None  # the slot whose modules every other slot uses

    def add_slot(self, ctx: SequenceContext, task: str) -> None:
        super().add_slot(ctx, task)
        if self.first is not None and self.first in ctx.model.slots and self.first != task:
            get_kind(self.kind).tie(ctx.model, task, self.first)  # task's slot computes with the first slot's modules

    def shared_parameters(self, ctx: SequenceContext, task: str) -> list[nn.Parameter]:
        """The shared adapter's parameters (what every task trains; heads excluded)."""
        return get_kind(self.kind).trainable_parameters(ctx.model, task)

    def start_task(self, ctx: SequenceContext, task: str) -> None:
        if task in ctx.model.slots:
            ctx.model.remove_slot(task)
        self.add_slot(ctx, task)
        if self.first is None:
            self.first = task

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        from continual.train import fit_slot
        from continual.trainer import mlflow_logger

        self.start_task(ctx, task)

        def fit(run):
            return fit_slot(ctx.model, task, ctx.base, ctx.config, ctx.train_examples(task), ctx.data[task].dev,
                            logger=mlflow_logger(run), show_progress=ctx.show_progress)

        return self.finish(ctx, task, run_nested(ctx, task, fit, register=self.registers))

    def finish(self, ctx: SequenceContext, task: str, outcome: StepOutcome) -> StepOutcome:
        if outcome.version is not None:
            outcome.shared_ref = outcome.version.ref  # this version holds the shared weights now in force
        return outcome


class SeqLoraMethod(SharedAdapterMethod):
    name = "seq-lora"
    fixed_kind = "lora"


class SeqFtMethod(SharedAdapterMethod):
    name = "seq-ft"
    fixed_kind = "full"
