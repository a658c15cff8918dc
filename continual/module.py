"""The LightningModules that train slots (adapter + head) of an `AdapterModel`.

Kept apart from the model (Lightning style guide): the nn.Module is `modeling.model.AdapterModel`,
these classes only say how to train it.  `forward` is inference.  `SlotTraining` is the base that
`AdapterClassifier` (one task) and `continual.methods.mixed_batches.MultiTaskClassifier` share.
"""
from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F

from continual.config import TrainConfig
from continual.optim import build_optimizer, build_scheduler, layer_index, param_groups
from modeling.model import AdapterModel

ADAPTIVE_CLIP_EPS = 1e-3  # floor on ||theta|| so zero-initialised weights (LoRA B) can still move


@torch.no_grad()
def adaptive_clip_(parameters, alpha: float, eps: float = ADAPTIVE_CLIP_EPS) -> int:
    """Adaptive gradient clipping, per parameter: when ||g|| > alpha * max(||theta||, eps), rescale g to
    alpha * max(||theta||, eps) * g / ||g||.  Returns how many gradients were rescaled.

    Hand-written: torch and Lightning clip by a global norm or value only; timm's `adaptive_clip_grad`
    is unit-wise (per output row, as in NFNets), while the rule asked for here is per parameter tensor.
    """
    clipped = 0
    for p in parameters:
        if p.grad is None:
            continue
        g_norm = p.grad.detach().float().norm()
        limit = alpha * p.detach().float().norm().clamp(min=eps)
        if g_norm > limit:
            p.grad.mul_((limit / g_norm).to(p.grad.dtype))
            clipped += 1
    return clipped


class SlotTraining(L.LightningModule):
    """What every training module shares: the parameters it trains, and the optimizer and LR schedule
    built over them from the config."""

    def __init__(self, model: AdapterModel, config: TrainConfig, total_steps: int, extra_loss=None):
        super().__init__()
        self.model = model
        self.config = config
        self.total_steps = total_steps
        # Optional regulariser (e.g. EWC's penalty): a callable () -> scalar tensor added to the loss.
        self.extra_loss = extra_loss

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        raise NotImplementedError

    def lr_scales(self) -> dict[int, float]:
        """id(param) -> LR factor for parameters the adapter kind wants trained faster or slower."""
        return {}

    def lr_scales_with_heads(self) -> dict[int, float]:
        """lr_scales(), with every classification head's parameters (the model's `heads`) at head_lr_scale on top."""
        scales = self.lr_scales()
        if self.config.head_lr_scale != 1.0:
            for p in getattr(self.model, "heads", torch.nn.ModuleDict()).parameters():
                scales[id(p)] = scales.get(id(p), 1.0) * self.config.head_lr_scale
        return scales

    def configure_optimizers(self):
        trainable = {id(p) for p in self.trainable_parameters()}
        named = [(n, p) for n, p in self.model.named_parameters() if id(p) in trainable]
        layer_of, num_layers = (layer_index(self.model.encoder) if self.config.layer_lr_decay != 1.0
                                else ({}, 0))
        groups = param_groups(named, self.config.learning_rate, self.config.weight_decay, layer_of=layer_of,
                              num_layers=num_layers, layer_lr_decay=self.config.layer_lr_decay,
                              lr_scale_of=self.lr_scales_with_heads())
        optimizer = build_optimizer(groups, self.config)
        scheduler = build_scheduler(optimizer, self.config, self.total_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Where Lightning clips (after unscaling fp16 gradients, before the step): adaptive clipping per
        parameter first (`adaptive_clip`), then the global-norm clip (`grad_clip_norm`)."""
        if self.config.adaptive_clip > 0:
            adaptive_clip_([p for g in optimizer.param_groups for p in g["params"]], self.config.adaptive_clip)
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)


class AdapterClassifier(SlotTraining):
    """Trains one slot (adapter + head) on one task's batches."""

    def __init__(self, model: AdapterModel, slot: str, config: TrainConfig, total_steps: int,
                 extra_loss=None):
        super().__init__(model, config, total_steps, extra_loss)
        self.slot = slot
        self._correct = 0
        self._seen = 0
        self._loss_sum = 0.0

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.trainable_parameters(self.slot)

    def lr_scales(self) -> dict[int, float]:
        return self.model.lr_scales(self.slot)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        return self.model(self.slot, input_ids, attention_mask, **extra)  # (B, num_labels)

    def _step(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        batch = dict(batch)
        labels = batch.pop("labels")
        logits = self(**batch)
        return F.cross_entropy(logits.float(), labels), (logits.argmax(-1) == labels)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, _ = self._step(batch)
        if self.extra_loss is not None:
            loss = loss + self.extra_loss()
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=len(batch["labels"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._correct, self._seen, self._loss_sum = 0, 0, 0.0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, hits = self._step(batch)
        self._correct += int(hits.sum())
        self._seen += len(hits)
        self._loss_sum += float(loss) * len(hits)

    def on_validation_epoch_end(self) -> None:
        # Accuracy and loss over the whole dev split, not means of per-batch figures.
        # Under DDP each process sees a shard of dev: average the shards so every rank decides alike.
        sync = self.trainer.world_size > 1
        self.log("dev/accuracy", self._correct / max(self._seen, 1), prog_bar=True, sync_dist=sync)
        self.log("dev/loss", self._loss_sum / max(self._seen, 1), sync_dist=sync)



class KeepBestWeights(L.Callback):
    """Snapshot the trainable weights at the best dev accuracy and restore them when training ends,
    so early stopping returns the best adapter rather than the last one.  With `include_encoder`
    (progressive unfreezing: base layers start training mid-run) the encoder is snapshot too."""

    def __init__(self, monitor: str = "dev/accuracy", include_encoder: bool = False):
        self.monitor = monitor
        self.include_encoder = include_encoder
        self.best: float | None = None
        self.best_step: int = -1
        self._snapshot: dict[int, torch.Tensor] | None = None

    def _params(self, module: SlotTraining) -> list[torch.nn.Parameter]:
        params = list(module.trainable_parameters())
        if self.include_encoder:
            seen = {id(p) for p in params}
            params += [p for p in module.model.encoder.parameters() if id(p) not in seen]
        return params

    def on_validation_end(self, trainer: L.Trainer, module: SlotTraining) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or value > self.best:
            self.best, self.best_step = value, trainer.global_step
            self._snapshot = {i: p.detach().clone() for i, p in enumerate(self._params(module))}

    def on_train_end(self, trainer: L.Trainer, module: SlotTraining) -> None:
        if self._snapshot is None:
            return
        with torch.no_grad():
            for i, p in enumerate(self._params(module)):
                p.copy_(self._snapshot[i])
