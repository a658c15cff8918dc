"""Training diagnostics: gradient norms to MLflow, a hard stop on NaN/Inf, loss-spike and overfitting warnings.

`Diagnostics` is a thin Lightning callback over pure functions (`is_spike`, `is_overfitting`), added by
`continual.trainer.build_trainer` to every training.  A non-finite loss or gradient raises
`DivergenceError` (a `ContinualError`: the CLI prints it as one red line and exits 1); the run
lifecycle (`continual.train.run_training`) then ends the MLflow run FAILED and registers nothing.
Warnings are `ContinualWarning`s, which the CLI shows as one yellow line each.
"""
from __future__ import annotations

import math
import statistics
import warnings
from collections import deque
from typing import Sequence

import lightning as L
import torch

from tasks.errors import ContinualError, ContinualWarning

SPIKE_WINDOW = 50  # losses in the running median
SPIKE_MIN_HISTORY = 10  # no spike verdict before this many steps (the first losses fall fast)


class DivergenceError(ContinualError):
    """Training produced a NaN or Inf: nothing the run made is usable."""


def is_spike(loss: float, history: Sequence[float], factor: float) -> bool:
    """loss > factor x median(history), once there is enough history to trust the median."""
    return factor > 0 and len(history) >= SPIKE_MIN_HISTORY and loss > factor * statistics.median(history)


def is_overfitting(train_losses: Sequence[float], dev_losses: Sequence[float], evals: int) -> bool:
    """Over the last `evals` evaluations dev loss rose at each one while train loss fell at each one.

    Both sequences hold one value per dev evaluation (train: the mean loss since the previous one).
    """
    if evals <= 0 or len(dev_losses) < evals + 1 or len(train_losses) < evals + 1:
        return False
    dev, train = dev_losses[-evals - 1:], train_losses[-evals - 1:]
    return all(b > a for a, b in zip(dev, dev[1:])) and all(b < a for a, b in zip(train, train[1:]))


def grad_norms(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """L2 norm of the gradients of each parameter group (by its `name`, else its index) and of all of them."""
    norms: dict[str, float] = {}
    total = 0.0
    for i, group in enumerate(optimizer.param_groups):
        grads = [p.grad.detach().float() for p in group["params"] if p.grad is not None]
        if not grads:
            continue
        sq = float(sum(g.pow(2).sum() for g in grads))
        norms[str(group.get("name", i))] = math.sqrt(sq) if math.isfinite(sq) else sq
        total += sq
    norms["global"] = math.sqrt(total) if math.isfinite(total) else total
    return norms


class Diagnostics(L.Callback):
    """See the module doc.  `check_grads=False` under fp16 loss scaling, whose scaler skips Inf steps itself."""

    def __init__(self, *, spike_factor: float = 10.0, overfit_evals: int = 3, log_every: int = 10,
                 check_grads: bool = True, hint: str = ""):
        self.spike_factor = spike_factor
        self.overfit_evals = overfit_evals
        self.log_every = log_every
        self.check_grads = check_grads
        self.hint = hint  # the settings that matter for a divergence, for the error line
        self.losses: deque[float] = deque(maxlen=SPIKE_WINDOW)
        self.train_means: list[float] = []
        self.dev_losses: list[float] = []
        self._since_eval: list[float] = []
        self.warned: set[str] = set()

    # -- hard stop ----------------------------------------------------------------------------------
    def _diverged(self, trainer: L.Trainer, what: str) -> DivergenceError:
        return DivergenceError(
            f"training diverged at step {trainer.global_step}: {what} ({self.hint}); lower --set learning_rate or "
            f"clip with --set grad_clip_norm=1.0; nothing was registered")

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        value = float(loss.detach())
        if not math.isfinite(value):
            raise self._diverged(trainer, f"the loss is {value}")

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer) -> None:
        # Called after gradients are complete (accumulated, all-reduced, unscaled) and before clipping.
        due = self.log_every > 0 and trainer.global_step % self.log_every == 0
        if not (self.check_grads or due):
            return
        norms = grad_norms(optimizer)
        if self.check_grads and not math.isfinite(norms["global"]):
            bad = sorted(k for k, v in norms.items() if not math.isfinite(v) and k != "global")
            raise self._diverged(trainer, f"the gradient norm is {norms['global']} (groups {', '.join(bad)})")
        if due and trainer.logger is not None and trainer.is_global_zero:
            trainer.logger.log_metrics({f"grad_norm/{k}": v for k, v in norms.items()}, step=trainer.global_step)

    # -- warnings -----------------------------------------------------------------------------------
    def _warn(self, key: str, message: str, trainer: L.Trainer) -> None:
        """Once per kind per training, and only from the first process."""
        if key in self.warned or not trainer.is_global_zero:
            return
        self.warned.add(key)
        warnings.warn(message, ContinualWarning, stacklevel=2)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        value = float(loss.detach())
        if is_spike(value, self.losses, self.spike_factor):
            self._warn("spike", f"loss spike at step {trainer.global_step}: {value:.3g} > {self.spike_factor:g} x the "
                                f"running median {statistics.median(self.losses):.3g}; consider a lower learning_rate "
                                f"or --set grad_clip_norm=1.0", trainer)
        self.losses.append(value)
        self._since_eval.append(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dev = trainer.callback_metrics.get("dev/loss")
        if trainer.sanity_checking or dev is None or not self._since_eval:
            return
        self.train_means.append(sum(self._since_eval) / len(self._since_eval))
        self._since_eval = []
        self.dev_losses.append(float(dev))
        if is_overfitting(self.train_means, self.dev_losses, self.overfit_evals):
            n = self.overfit_evals
            self._warn("overfit", f"overfitting: dev loss rose for {n} evaluations "
                                  f"({self.dev_losses[-n - 1]:.3g} -> {self.dev_losses[-1]:.3g}) while train loss "
                                  f"fell ({self.train_means[-n - 1]:.3g} -> {self.train_means[-1]:.3g}); the "
                                  f"best-dev weights are kept; fewer epochs or --set augment=word_dropout=0.1 may help",
                       trainer)
