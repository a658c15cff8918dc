"""The one place a Lightning `Trainer` is built: every method (train_task, seq-lora, ewc, replay, mtl)
trains through `build_trainer`, so each honours the same settings: precision, clipping,
accumulation, early stopping, keep-best weights, the dev-evaluation interval, progressive
unfreezing and the progress bar."""
from __future__ import annotations

import math

import lightning as L

from continual.config import TrainConfig
from continual.module import KeepBestWeights
from continual.unfreeze import ProgressiveUnfreezing, parse_unfreeze_schedule

# TrainConfig precision (resolved: never "auto") -> Lightning's precision plugin name.
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


def total_steps(config: TrainConfig, train_batches: int) -> int:
    """Optimizer steps a training will take: epochs x ceil(micro-batches / accumulation), capped by max_steps."""
    total = math.ceil(train_batches / config.accumulate_grad_batches) * config.max_epochs
    return min(total, config.max_steps) if config.max_steps > 0 else total


def build_trainer(config: TrainConfig, *, train_batches: int, has_dev: bool, logger=None,
                  show_progress: bool = False, callbacks: list | None = None) -> tuple[L.Trainer, KeepBestWeights | None]:
    """(Trainer, the keep-best callback or None when there is no dev split).

    `train_batches` is the number of micro-batches per epoch (for the evaluation interval).  The
    LightningModule it trains must offer `trainable_parameters()` and, for unfreezing, `model.encoder`.
    """
    cbs = list(callbacks or [])
    schedule = parse_unfreeze_schedule(config.unfreeze_schedule)
    if schedule is not None:
        cbs.append(ProgressiveUnfreezing(schedule))
    keep_best = KeepBestWeights(include_encoder=schedule is not None) if has_dev else None
    if keep_best is not None:
        cbs.append(keep_best)
        if config.early_stopping_patience:
            from lightning.pytorch.callbacks import EarlyStopping

            cbs.append(EarlyStopping("dev/accuracy", mode="max", patience=config.early_stopping_patience))
    if show_progress:
        from lightning.pytorch.callbacks import RichProgressBar

        cbs.append(RichProgressBar(leave=True))
    val_interval = None
    if has_dev and config.eval_every_n_steps:
        val_interval = min(config.eval_every_n_steps * config.accumulate_grad_batches, train_batches)
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_epochs=config.max_epochs, max_steps=config.max_steps,
        precision=LIGHTNING_PRECISION[config.resolved_precision], gradient_clip_val=config.grad_clip_norm or None,
        accumulate_grad_batches=config.accumulate_grad_batches, callbacks=cbs, logger=logger or False,
        enable_checkpointing=False, enable_progress_bar=show_progress, enable_model_summary=False,
        log_every_n_steps=1, num_sanity_val_steps=0, val_check_interval=val_interval,
        limit_val_batches=1.0 if has_dev else 0, deterministic=False,
    )
    return trainer, keep_best


def mlflow_logger(run):
    """Lightning's MLflow logger writing into an open registry run (`AdapterRegistry.run`)."""
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name=run.experiment_name, tracking_uri=run.tracking_uri, run_id=run.run_id)
