"""O-LoRA (Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning").

Each task learns a LoRA of its own while every earlier task's LoRA stays frozen AND switched on: the
model after task t is W + Σ_{k≤t} B_k A_k (AdapterModel.stack keeps the earlier slots active, peft sums
them).  The new task's A is pushed into a subspace orthogonal to the earlier ones':

    L = CE + λ1 Σ_{k<t} Σ_layers ‖A_k A_tᵀ‖²_F  (+ λ2 ‖θ_t‖², 0 by default)

with A (r x k) as peft stores lora_A (the paper writes A as k x r and the product as A_kᵀ A_t: the
same r x r overlaps).  λ1 = 0.5 and λ2 = 0 follow the paper's setting.  Heads stay per task, as in
every method here, so each task is still evaluated through its own head on the summed model.

Registration: none (runs tagged continual.registered=false): a task's model is the sum of every LoRA
trained so far, which no single adapter version holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from continual.methods.base import Method, MethodError, SequenceContext, StepOutcome, run_nested
from modeling.kinds import get_kind


@dataclass
class OLoraSettings:
    olora_lambda: float = 0.5  # λ1: weight of the orthogonality loss (the paper's 0.5)
    olora_l2: float = 0.0  # λ2: L2 on the new task's LoRA weights (the paper's 0)

    def __post_init__(self) -> None:
        if self.olora_lambda < 0 or self.olora_l2 < 0:
            raise MethodError(f"olora_lambda={self.olora_lambda}, olora_l2={self.olora_l2}: both must be >= 0 "
                              f"(sequence file `config:`)")


def orthogonality_loss(new: dict[str, torch.Tensor], earlier: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    """Σ_k Σ_layers ‖A_k A_newᵀ‖²_F over the layers both adapt (0 without earlier tasks)."""
    total = torch.zeros(())
    for old in earlier:
        for name, a_new in new.items():
            if name in old:
                total = total + (old[name].detach().float() @ a_new.float().T).pow(2).sum()
    return total


class OLoraMethod(Method):
    name = "o-lora"
    kind = "lora"
    settings_cls = OLoraSettings
    registers = False
    registration = "not registered: a task's model is the sum of every LoRA trained so far, not one adapter version"

    def __init__(self, settings=None):
        super().__init__(settings)
        self.trained: list[str] = []  # slots whose LoRA is frozen and stays switched on

    def add_slot(self, ctx: SequenceContext, task: str) -> None:
        super().add_slot(ctx, task)
        if self.trained:
            ctx.model.stack(task, [s for s in self.trained if s != task])

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        from continual.train import fit_slot
        from continual.trainer import mlflow_logger

        self.add_slot(ctx, task)
        lora = get_kind("lora")
        new = lora.down_projections(ctx.model, task)
        earlier = [lora.down_projections(ctx.model, s) for s in self.trained]
        params = lora.trainable_parameters(ctx.model, task)
        lam, l2 = self.settings.olora_lambda, self.settings.olora_l2

        def penalty() -> torch.Tensor:
            loss = lam * orthogonality_loss(new, earlier)
            if l2:
                loss = loss + l2 * sum(p.pow(2).sum() for p in params)
            return loss

        def fit(run):
            result = fit_slot(ctx.model, task, ctx.base, ctx.config, ctx.train_examples(task), ctx.data[task].dev,
                              logger=mlflow_logger(run), show_progress=ctx.show_progress,
                              extra_loss=penalty if earlier or l2 else None)
            run.log_metrics({"olora/orthogonality": float(orthogonality_loss(new, earlier))})
            return result

        outcome = run_nested(ctx, task, fit, register=False, params={"olora_lambda": lam, "olora_l2": l2})
        self.trained.append(task)
        for slot in self.trained:  # from now on every task is evaluated on the sum of all LoRAs trained so far
            ctx.model.stack(slot, [s for s in self.trained if s != slot])
        return outcome
