"""The one place a Lightning `Trainer` is built: every method (train_task, seq-lora, ewc, replay, mtl)
trains through `build_trainer`, so each honours the same settings: precision, the epoch budget
(`max_epochs: auto`), clipping, accumulation, early stopping, keep-best weights, the dev-evaluation
interval, progressive unfreezing, diagnostics, several processes (DDP) and the progress bar."""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import lightning as L
import torch
from torch import nn

from continual.config import TrainConfig
from continual.diagnostics import Diagnostics
from continual.module import KeepBestWeights
from continual.unfreeze import ProgressiveUnfreezing, parse_unfreeze_schedule

# TrainConfig precision (resolved: never "auto") -> Lightning's precision plugin name.
LIGHTNING_PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


# `max_epochs: auto`: as many whole epochs as fit in this many optimizer steps, at least one and at most
# AUTO_MAX_EPOCHS.  Chosen on dev splits (README, training settings): small tasks (300-600 examples at
# batch 16: 19-38 steps an epoch) need ~200 steps to learn, while 2,000 examples (125 steps) learn in
# one epoch and must not take longer than that; early stopping on dev ends a run sooner.
AUTO_TARGET_STEPS = 200
AUTO_MAX_EPOCHS = 20


def steps_per_epoch(config: TrainConfig, train_batches: int) -> int:
    """Optimizer steps per epoch of `train_batches` micro-batches (per process under DDP)."""
    per_process = math.ceil(train_batches / max(config.devices, 1)) if config.strategy == "ddp" else train_batches
    return max(1, math.ceil(per_process / config.accumulate_grad_batches))


def resolved_epochs(config: TrainConfig, train_batches: int) -> int:
    """`max_epochs`, with `auto` resolved for a training of `train_batches` micro-batches per epoch:
    enough epochs for `max_steps` when that is set, else ~AUTO_TARGET_STEPS steps in whole epochs."""
    if config.max_epochs != "auto":
        return int(config.max_epochs)
    per_epoch = steps_per_epoch(config, train_batches)
    if config.max_steps > 0:
        return math.ceil(config.max_steps / per_epoch)
    return min(AUTO_MAX_EPOCHS, max(1, AUTO_TARGET_STEPS // per_epoch))


def total_steps(config: TrainConfig, train_batches: int) -> int:
    """Optimizer steps a training will take: epochs x ceil(micro-batches / accumulation), capped by max_steps."""
    total = steps_per_epoch(config, train_batches) * resolved_epochs(config, train_batches)
    return min(total, config.max_steps) if config.max_steps > 0 else total


def is_main_process() -> bool:
    """False in the extra processes Lightning's DDP launcher starts (they train, they never log or register)."""
    import os

    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def lightning_strategy(config: TrainConfig) -> dict:
    """Trainer keyword arguments for `strategy`/`devices`: DDP over gloo on CPU, nccl on GPUs."""
    if config.strategy != "ddp":
        return {"devices": 1}
    import torch
    from lightning.pytorch.strategies import DDPStrategy

    on_gpu = torch.cuda.is_available()
    return {"accelerator": "gpu" if on_gpu else "cpu", "devices": config.devices,
            "strategy": DDPStrategy(process_group_backend="nccl" if on_gpu else "gloo")}


def build_trainer(config: TrainConfig, *, train_batches: int, has_dev: bool, logger=None,
                  show_progress: bool = False, callbacks: list | None = None) -> tuple[L.Trainer, KeepBestWeights | None]:
    """(Trainer, the keep-best callback or None when there is no dev split).

    `train_batches` is the number of micro-batches per epoch (for the evaluation interval).  The
    LightningModule it trains must offer `trainable_parameters()` and, for unfreezing, `model.encoder`.
    """
    cbs = list(callbacks or [])
    precision = config.resolved_precision
    cbs.append(Diagnostics(spike_factor=config.loss_spike_factor, overfit_evals=config.overfit_evals,
                           check_grads=precision != "16",  # fp16's loss scaler skips Inf steps itself
                           hint=f"optimizer={config.optimizer}, learning_rate={config.learning_rate:g}, "
                                f"precision={precision}"))
    schedule = parse_unfreeze_schedule(config.unfreeze_schedule)
    if schedule is not None:
        cbs.append(ProgressiveUnfreezing(schedule))
    keep_best = KeepBestWeights(include_encoder=schedule is not None) if has_dev else None
    if keep_best is not None:
        cbs.append(keep_best)
        if config.early_stopping_patience:
            from lightning.pytorch.callbacks import EarlyStopping

            # strict=False: a run that ends before its first dev evaluation (max_steps) is not an error.
            cbs.append(EarlyStopping("dev/accuracy", mode="max", patience=config.early_stopping_patience,
                                     strict=False, check_on_train_epoch_end=False))
    if show_progress:
        from lightning.pytorch.callbacks import RichProgressBar

        cbs.append(RichProgressBar(leave=True))
    val_interval = None
    if has_dev and config.eval_every_n_steps:
        val_interval = min(config.eval_every_n_steps * config.accumulate_grad_batches, train_batches)
    placement = {"accelerator": "auto", **lightning_strategy(config)}
    trainer = L.Trainer(
        **placement, max_epochs=resolved_epochs(config, train_batches), max_steps=config.max_steps,
        precision=LIGHTNING_PRECISION[precision], gradient_clip_val=config.grad_clip_norm or None,
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


def precision_note(config: TrainConfig) -> str:
    """One line: the precision training will use and why (what `auto` saw, or that it was asked for)."""
    from modeling.hardware import detect

    hw = detect()
    used = config.resolved_precision
    name = {"32": "fp32", "bf16": "bf16 autocast", "16": "fp16 autocast with dynamic loss scaling"}[used]
    if config.precision == "auto":
        why = "" if used == "bf16" else "; fp32 is much faster here than emulated bf16"
        return f"precision {name} (auto: {hw.description}{why})"
    slow = used == "bf16" and not hw.native_bf16
    return f"precision {name} (precision={config.precision} as set{'; this hardware emulates bf16, expect it to be slow' if slow else ''}; {hw.description})"


@contextmanager
def fast_path(model, config: TrainConfig, base_trains: bool = False) -> Iterator[None]:
    """What every training loop (fit_slot, the mixed-batch methods) trains inside: frozen linears held in
    bf16 under bf16 autocast, the frozen base's own dropout off (unless `base_dropout`), and the CPU's
    faster attention kernel for bf16 training.  Where base weights train (`base_trains`: full fine-tuning;
    or progressive unfreezing, whose layers start training mid-run) the base keeps its weights' dtype and
    its dropout, as fine-tuning a model usually does."""
    from modeling.hardware import training_attention

    frozen_base = not (base_trains or config.unfreeze_schedule)
    with frozen_linears_in_bf16(model, config.resolved_precision, enabled=frozen_base), \
            base_dropout_off(model, enabled=frozen_base and not config.base_dropout), \
            training_attention(model.encoder, config.resolved_precision):
        yield


@contextmanager
def frozen_linears_in_bf16(model, precision: str, enabled: bool = True) -> Iterator[None]:
    """Hold the frozen Linear layers of the encoder in bf16 while training in bf16 autocast.

    Autocast re-casts every fp32 weight to bf16 at every matmul, forward and backward: profiled on
    MiniLM + LoRA (batch 16, AMX CPU) those copies were the largest single cost of a step (31% of CPU
    time, more than the matmuls).  A frozen weight casts to the same bf16 tensor every time, so casting
    it once gives bit-identical numerics.  Trainable layers (the slot's adapter, base layers that
    train) stay fp32; `enabled=False` (progressive unfreezing: layers start training mid-run) or any
    other precision leaves the model alone.  The original fp32 parameters are put back on exit.
    """
    swapped: list[tuple[nn.Module, dict[str, nn.Parameter]]] = []
    if enabled and precision == "bf16":
        for module in model.encoder.modules():
            params = dict(module.named_parameters(recurse=False))
            if isinstance(module, nn.Linear) and params and not any(p.requires_grad for p in params.values()):
                for name, p in params.items():
                    setattr(module, name, nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
                swapped.append((module, params))
    try:
        yield
    finally:
        for module, params in swapped:
            for name, p in params.items():
                setattr(module, name, p)


@contextmanager
def base_dropout_off(model, enabled: bool = True) -> Iterator[None]:
    """Switch off the frozen base encoder's own dropout (embeddings, attention probabilities, hidden states)
    while an adapter trains; the adapter's own dropout (peft's `lora_dropout`) and the head's stay.

    Profiled on MiniLM + LoRA (batch 16, one thread, AMX CPU) the base's 19 dropouts a step were the
    largest single cost (CPU random numbers, ~4 ms per call), and at the same settings test and dev
    accuracy were the same without them (README, Performance).  `enabled=False` (the `base_dropout`
    setting, or progressive unfreezing: base layers train) leaves the model alone; the rates are put
    back on exit.
    """
    changed: list[tuple[nn.Dropout, float]] = []
    if enabled:
        for name, module in model.encoder.named_modules():
            if isinstance(module, nn.Dropout) and module.p > 0 and "lora_dropout" not in name:
                changed.append((module, module.p))
                module.p = 0.0  # BERT's attention reads its dropout rate from this module too
    try:
        yield
    finally:
        for module, p in changed:
            module.p = p
