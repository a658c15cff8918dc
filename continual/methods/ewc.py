"""Elastic weight consolidation (Kirkpatrick et al. 2017) on the sequence's shared adapter.

After task k trains, the diagonal Fisher F_k of the shared parameters is estimated from squared
per-example gradients of the log-likelihood of the gold labels on `fisher_samples` training examples
(the empirical Fisher), and the weights θ*_k are kept.  Every later task trains with

    L = CE + Σ_k (ewc_lambda / 2) Σ_p F_k,p (θ_p − θ*_k,p)²

through `AdapterClassifier(extra_loss=...)`.  Heads are per task and never shared, so only the shared
adapter (the one LoRA by default, or the encoder copy with `shared_kind: full`) is consolidated.

ewc_lambda: the empirical Fisher of LoRA weights is small (mean ≈ 1e-4 per weight on MiniLM), so the
useful λ is large.  The default 1e4 was chosen on the standard benchmark's first two tasks (dbpedia then
amazon, 500 examples each, one epoch, lr 5e-3): seq-lora lost 26.5 points on dbpedia; λ=1e2 lost 13.0,
λ=1e4 lost 0.0 while amazon still learnt as well as without EWC (24.5% vs 25.5%), λ=1e6 lost 0.0 but
stopped amazon from learning (19.5%).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from continual.methods.base import MethodError, SequenceContext, StepOutcome, run_nested
from continual.methods.sequential import SharedAdapterMethod, SharedSettings
from modeling.hardware import autocast
from modeling.model import AdapterModel
from tasks.loaders import Example


def ewc_penalty(params: Sequence[torch.Tensor], anchors: Sequence[Sequence[torch.Tensor]],
                fishers: Sequence[Sequence[torch.Tensor]], lam: float) -> torch.Tensor:
    """Σ_k (lam / 2) Σ_p F_k,p (θ_p − θ*_k,p)²  (0 without any earlier task)."""
    total = torch.zeros((), device=params[0].device if params else "cpu")
    for anchor, fisher in zip(anchors, fishers, strict=True):
        for p, a, f in zip(params, anchor, fisher, strict=True):
            total = total + (f * (p - a) ** 2).sum()
    return lam / 2 * total


def diagonal_fisher(model: AdapterModel, slot: str, params: Sequence[nn.Parameter], tokenizer,
                    examples: Sequence[Example], max_length: int = 128, precision: str = "auto") -> list[torch.Tensor]:
    """Mean over `examples` of the squared gradient of −log p(gold | x) w.r.t. each of `params` (eval mode)."""
    from continual.data import EncodedDataset, make_loader

    if not examples:
        raise MethodError("the Fisher needs at least one training example")
    dataset = EncodedDataset(examples, tokenizer, model.slots[slot].labels, max_length)
    fisher = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    flags = [p.requires_grad for p in params]
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it predicts
    try:
        for p in params:
            p.requires_grad_(True)
        for batch in make_loader(dataset, tokenizer, batch_size=1, shuffle=False):  # per-example gradients
            labels = batch.pop("labels")
            with autocast(precision):
                logits = model(slot, **batch)
            loss = F.cross_entropy(logits.float(), labels)
            grads = torch.autograd.grad(loss, list(params), allow_unused=True)
            for acc, g in zip(fisher, grads):
                if g is not None:
                    acc += g.detach().float() ** 2
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        model.train(was_training)
    return [f / len(dataset) for f in fisher]


@dataclass
class EwcSettings(SharedSettings):
    ewc_lambda: float = 1e4  # strength of the penalty (see the module doc)
    fisher_samples: int = 200  # training examples per task for the Fisher estimate

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.ewc_lambda < 0:
            raise MethodError(f"ewc_lambda={self.ewc_lambda} must be >= 0 (sequence file `config: {{ewc_lambda: 1e4}}`)")
        if self.fisher_samples < 1:
            raise MethodError(f"fisher_samples={self.fisher_samples} must be >= 1 (sequence file `config:`)")


class EwcMethod(SharedAdapterMethod):
    name = "ewc"
    settings_cls = EwcSettings

    def __init__(self, settings: EwcSettings | None = None):
        super().__init__(settings)
        self.anchors: list[list[torch.Tensor]] = []  # θ*_k per earlier task
        self.fishers: list[list[torch.Tensor]] = []  # F_k per earlier task

    def train(self, ctx: SequenceContext, i: int, task: str) -> StepOutcome:
        from continual.data import subsample
        from continual.train import fit_slot
        from continual.trainer import mlflow_logger

        self.start_task(ctx, task)
        params = self.shared_parameters(ctx, task)
        lam = self.settings.ewc_lambda

        def penalty() -> torch.Tensor:
            return ewc_penalty(params, self.anchors, self.fishers, lam)

        def fit(run):
            result = fit_slot(ctx.model, task, ctx.base, ctx.config, ctx.train_examples(task), ctx.data[task].dev,
                              logger=mlflow_logger(run), show_progress=ctx.show_progress,
                              extra_loss=penalty if self.anchors else None)
            # The Fisher of the trained task is part of EWC's training cost: computed inside the timed fit.
            sample = subsample(ctx.train_examples(task), self.settings.fisher_samples, ctx.config.seed)
            fisher = diagonal_fisher(ctx.model, task, params, ctx.base.tokenizer, sample, ctx.config.max_length,
                                     ctx.config.resolved_precision)
            self.fishers.append(fisher)
            self.anchors.append([p.detach().clone() for p in params])
            run.log_metrics({"ewc/fisher_mean": float(sum(f.sum() for f in fisher) / sum(f.numel() for f in fisher))})
            return result

        outcome = run_nested(ctx, task, fit, register=self.registers,
                             params={"ewc_lambda": lam, "fisher_samples": self.settings.fisher_samples})
        return self.finish(ctx, task, outcome)
