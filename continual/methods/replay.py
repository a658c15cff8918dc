"""Experience replay (Chaudhry et al. 2019, "tiny episodic memories") on the sequence's shared adapter.

After each task, `replay_per_task` of its training examples (default 50, a fixed seeded sample) join
a buffer.  Every batch of a later task carries `replay_batch_size` buffered examples (default: as many
as the batch's new-task examples) next to the new task's own; the buffer is walked in shuffled passes.
Tasks keep their label spaces, so each replayed example trains through its OWN task's head (earlier
heads therefore keep training too), while the one shared adapter sees every task.  The number of
steps is set by the new task's examples alone, as for the other methods.
"""
from __future__ import annotations

from dataclasses import dataclass

from continual.methods.base import MethodError, SequenceContext, StepOutcome, run_nested
from continual.methods.sequential import SharedAdapterMethod, SharedSettings
from tasks.loaders import Example


@dataclass
class ReplaySettings(SharedSettings):
    replay_per_task: int = 50  # training examples of each finished task kept in the buffer
    replay_batch_size: int = 0  # buffered examples per batch (0: the batch size)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.replay_per_task < 1:
            raise MethodError(f"replay_per_task={self.replay_per_task} must be >= 1 (sequence file `config:`)")
        if self.replay_batch_size < 0:
            raise MethodError(f"replay_batch_size={self.replay_batch_size} must be >= 0 (0: the batch size)")


class ReplayMethod(SharedAdapterMethod):
    name = "replay"
    settings_cls = ReplaySettings
    registration = ("one version per task: the shared adapter's weights after that task plus the task's head; "
                    "later tasks move the shared weights and, through replay, earlier heads (not re-registered)")

    def __init__(self, settings: ReplaySettings | None = None):
        super().__init__(settings)
        self.buffer: dict[str, list[Example]] = {}  # finished task -> its kept examples

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        from continual.data import subsample
        from continual.methods.mixed_batches import fit_multitask
        from continual.trainer import mlflow_logger

        self.start_task(ctx, task)
        old = list(self.buffer)
        slots = [task] + old
        trainable = ctx.model.trainable_parameters(task) + [p for s in old for p in ctx.model.heads[s].parameters()]
        replay_batch = self.settings.replay_batch_size or ctx.config.batch_size
        train = [ctx.train_examples(task)] + [self.buffer[s] for s in old]

        def fit(run):
            return fit_multitask(ctx.model, slots, task, ctx.base.tokenizer, ctx.config, train, [ctx.data[task].dev],
                                 replay_from=1, replay_batch_size=replay_batch, trainable=trainable, logger=mlflow_logger(run),
                                 show_progress=ctx.show_progress)

        outcome = run_nested(ctx, task, fit, register=self.registers, params={
            "replay_per_task": self.settings.replay_per_task, "replay_batch_size": replay_batch,
            "replay_buffer_examples": sum(len(v) for v in self.buffer.values())})
        self.buffer[task] = subsample(ctx.train_examples(task), self.settings.replay_per_task, ctx.config.seed)
        return self.finish(ctx, task, outcome)
