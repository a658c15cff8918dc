"""OSF (Nayak et al. 2025, "Sculpting Subspaces: Constrained Full Fine-Tuning in LLMs for Continual Learning")
through peft's `OSFConfig` (the `osf-svd` adapter kind, modeling/kinds/osf.py).

One encoder is trained through every task, a head per task (like seq-ft).  Each targeted weight is split by
SVD; its top singular directions (the preserved, "high" subspace) stay frozen and the rest trains with
gradients projected orthogonal to them.  After each task its update is merged into the encoder's weights
(`OsfKind.fold`) and the next task wraps the updated weights again with a LARGER preserved rank, so the
directions that carry what the earlier tasks learned are protected: peft's continual-learning recipe
("between tasks, recompute the SVD ... and increase the preserved subspace", OSF package reference).  The
update is merged first: the reference's snippet re-wraps `model.unload()`, which in peft 0.21 drops an OSF
layer's update unmerged, so each task's training would be lost.

The rule for the preserved share f_i of task i (0-based) of a sequence of n tasks:

    f_i = osf_rank_start + i * step,   step = osf_rank_step, or (1 - osf_rank_start) / n when it is 0

With step 0 this is the reference's "budget allocation" for a known sequence (task k freezes (k-1)/n of each
matrix, the last task still trains 1/n), started at osf_rank_start instead of 0 because peft refuses a
preserved rank of 0; osf_rank_start = 0.3 is peft's example's first task, and for n = 3 the rule gives
0.30, 0.53, 0.77 where that example uses 0.3, 0.5, 0.7.  A fixed osf_rank_step is the reference's other
form (a constant increase per task).

peft projects the gradients; the step stays in the projected subspace only for SGD (momentum and an L2
penalty are linear in them).  Adam-type optimizers (the default adamw) scale each coordinate of the step,
which takes part of it out: measured on the tests' tiny model (two tasks, lr 5e-3), 16% of the second task's
weight change lay in the preserved directions (33% without the projection; SGD: 5e-6, float noise).

Registration: none (runs tagged continual.registered=false): a task's model is the encoder with every
earlier task's update merged into its weights, which no single adapter version holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from continual.methods.base import Method, MethodError, SequenceContext, StepOutcome, run_nested
from modeling.kinds import get_kind


@dataclass
class OsfSettings:
    osf_rank_start: float = 0.3  # preserved share of each matrix for the first task (peft's example: 0.3)
    osf_rank_step: float = 0.0  # growth of the preserved share per task; 0: (1 - osf_rank_start) / tasks

    def __post_init__(self) -> None:
        if not 0 < self.osf_rank_start < 1 or self.osf_rank_step < 0:
            raise MethodError(f"osf_rank_start={self.osf_rank_start}, osf_rank_step={self.osf_rank_step}: the start "
                              f"must be in (0, 1) and the step >= 0 (sequence file `config: {{osf_rank_start: 0.3}}`)")

    def preserved(self, i: int, n: int) -> float:
        """The preserved share f_i of task i (0-based) of n (module docstring)."""
        step = self.osf_rank_step or (1 - self.osf_rank_start) / n
        share = self.osf_rank_start + i * step
        if share >= 1:
            raise MethodError(f"osf_rank_start={self.osf_rank_start} + {i} x osf_rank_step={self.osf_rank_step} = "
                              f"{share:.3g} leaves task {i + 1} of {n} nothing to train; make start + (n-1) x step < 1 "
                              f"or set osf_rank_step: 0 (sequence file `config:`)")
        return share


class OsfMethod(Method):
    name = "osf"
    kind = "osf-svd"
    settings_cls = OsfSettings
    registers = False
    registration = ("not registered: a task's model is the encoder with every earlier task's OSF update merged into "
                    "its weights, not one adapter version")

    def kind_settings(self, ctx: SequenceContext, task: str) -> dict[str, Any]:
        return {**ctx.config.flat(), "effective_rank": self.settings.preserved(ctx.tasks.index(task), len(ctx.tasks))}

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        from continual.train import fit_slot
        from continual.trainer import mlflow_logger

        if task in ctx.model.slots:
            ctx.model.remove_slot(task)
        self.add_slot(ctx, task)
        share = ctx.model.slots[task].config.effective_rank

        def fit(run):
            return fit_slot(ctx.model, task, ctx.base, ctx.config, ctx.train_examples(task), ctx.data[task].dev,
                            logger=mlflow_logger(run), show_progress=ctx.show_progress)

        outcome = run_nested(ctx, task, fit, register=False, params={"osf_effective_rank": share})
        # Merge the update into the encoder: every task (this one and the earlier ones) now computes with it,
        # and the next task's SVD is taken of these weights.
        get_kind(self.kind).fold(ctx.model, task)
        return outcome
