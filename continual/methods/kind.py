"""Any adapter kind as a sequence method: each task gets its own slot of that kind in the one model.

`lora` gives isolated per-task adapters (backward transfer exactly 0); kinds with a shared part
(`shared-b-lora`, `task-embedding`, ...) share it across the sequence's tasks, so what training one
task does to earlier ones shows up in the accuracy matrix.  Training and registration are
`train_task` itself, so a sequence step is exactly `continual train TASK --method KIND`; that includes
progressive unfreezing (`unfreeze_schedule`), which in a sequence changes the base layers every
earlier task is evaluated with.
"""
from __future__ import annotations

import dataclasses

from continual.methods.base import Method, SequenceContext, StepOutcome
from modeling.kinds import get_kind
from registry import tags as T


class KindMethod(Method):
    registration = "one adapter version per task (train_task); shared parts as versions of their own"

    def __init__(self, kind: str, settings=None):
        super().__init__(settings)
        self.kind = get_kind(kind).name
        self.name = kind

    @classmethod
    def setting_names_for(cls, kind: str) -> set[str]:
        """The kind's own settings (`share_group`, `train_shared`, `bottleneck`, ...)."""
        return {f.name for f in dataclasses.fields(get_kind(kind).config_cls)}

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        from continual.train import train_task

        result = train_task(ctx.registry, task, ctx.config, method=self.kind, base_model=ctx.base_model,
                            show_progress=ctx.show_progress, parent_run_id=ctx.parent_run_id, model=ctx.model,
                            extra_tags=ctx.tags(), init_from=ctx.init_sources.get(task))
        return StepOutcome(result.run_id, result.version, result.seconds, result.steps,
                           shared_ref=result.version.tags.get(T.SHARED_PART))
