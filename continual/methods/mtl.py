"""Multi-task learning: joint training on every task of the sequence at once, the usual upper bound.

One shared adapter (LoRA by default, `shared_kind: full` for the encoder) and one head per task, trained
on all tasks' training examples shuffled together into mixed batches, each example through its own
head (`continual.methods.mixed_batches`); model selection on the mean of the tasks' dev accuracies.
The number of steps is that of the whole sequence (Σ examples / batch size, per epoch).

R: there are no intermediate models, so only the last row R[T-1] is filled (the joint model on every
task); earlier rows stay null.  MTL reports ACC; BWT, FWT and forgetting are undefined (null).
Registration: none (the nested run is tagged continual.registered=false): its heads are only meaningful
with the jointly trained adapter, which no single task's training run produced.
"""
from __future__ import annotations

from continual.methods.base import SequenceContext, StepOutcome, run_nested
from continual.methods.sequential import SharedAdapterMethod, SharedSettings
from registry import tags as T


class MtlMethod(SharedAdapterMethod):
    name = "mtl"
    settings_cls = SharedSettings
    joint = True
    registers = False
    registration = "not registered: a joint model is not a per-task adapter version"

    def train_all(self, ctx: SequenceContext) -> StepOutcome:
        from continual.methods.mixed_batches import fit_multitask
        from continual.trainer import mlflow_logger

        for task in ctx.tasks:
            self.start_task(ctx, task)
        first = ctx.tasks[0]
        trainable = ctx.model.trainable_parameters(first) + [
            p for s in ctx.tasks[1:] for p in ctx.model.heads[s].parameters()]
        train = [ctx.train_examples(t) for t in ctx.tasks]
        dev = [ctx.data[t].dev for t in ctx.tasks]

        def fit(run):
            return fit_multitask(ctx.model, ctx.tasks, first, ctx.base.tokenizer, ctx.config, train, dev,
                                 trainable=trainable, logger=mlflow_logger(run), show_progress=ctx.show_progress)

        return run_nested(ctx, first, fit, register=False, run_name="train-joint",
                          extra_tags={T.RUN_TASK: ",".join(ctx.tasks)},
                          params={"joint_tasks": ",".join(ctx.tasks), "joint_train_examples": sum(map(len, train))})
