"""Train one task's adapter and register it as a new version: the `continual train` job."""
from __future__ import annotations

import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L

from continual.config import TrainConfig
from continual.data import EncodedDataset, make_loader, subsample
from continual.evaluate import accuracy
from continual.module import AdapterClassifier, KeepBestWeights
from continual.unfreeze import ProgressiveUnfreezing, parse_unfreeze_schedule, unfrozen_base_state
from continual.warm_start import choose_source, warm_start
from registry.artifacts import SHARED_FILE, AdapterConfig, write_adapter_dir
from registry.base_model import BaseModel, load_base_model
from registry.kinds import get_kind
from registry.model import AdapterModel
from registry.registry import METRIC_PREFIX, SHA_PREFIX, AdapterRegistry, AdapterVersion
from tasks.errors import ContinualError
from tasks.fingerprint import data_fingerprint
from tasks.loaders import Example, load_split
from tasks.spec import TaskSpec

PRECISION = {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}


class TrainError(ContinualError):
    pass


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example]
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)


@dataclass
class TrainResult:
    task: str
    version: AdapterVersion
    run_id: str
    dev_accuracy: float | None
    test_accuracy: float | None
    seconds: float
    steps: int
    model: AdapterModel
    slot: str


def load_task_data(spec: TaskSpec) -> TaskData:
    """All splits of a registered task, refusing data that changed since registration."""
    if spec.kind != "classification":
        raise TrainError(
            f"task '{spec.name}' is a {spec.kind} task; this version trains classification tasks only "
            f"(register with --kind classification)"
        )
    splits = {s: load_split(spec, s) for s in ("train", "dev", "test") if spec.split_path(s)}
    current = data_fingerprint(splits)
    if spec.fingerprint and current != spec.fingerprint:
        raise TrainError(
            f"the data of task '{spec.name}' changed since it was registered (fingerprint "
            f"{spec.fingerprint[:12]}… is now {current[:12]}…); register it again under a new name"
        )
    return TaskData(spec, splits["train"], splits.get("dev", []), splits.get("test", []))


def build_model(base: BaseModel) -> AdapterModel:
    """A training model on a private copy of the base weights.

    Adapters attach to the encoder in place (peft layers, forward hooks), so training never shares
    the process-wide inference encoder: a slot active in one model must not leak into the other.
    """
    return AdapterModel(base.fresh_encoder())


def fit_slot(model: AdapterModel, slot: str, base: BaseModel, config: TrainConfig, train: list[Example],
             dev: list[Example], *, logger=None, show_progress: bool = False, extra_loss=None,
             callbacks: list | None = None) -> tuple[int, float | None]:
    """Train `slot` of `model` in place; returns (optimizer steps, best dev accuracy or None)."""
    labels = model.slots[slot].labels
    model.encoder.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.trainable_parameters(slot):
        p.requires_grad_(True)
    train_set = EncodedDataset(train, base.tokenizer, labels, config.max_length)
    train_loader = make_loader(train_set, base.tokenizer, config.batch_size, shuffle=True, seed=config.seed)
    dev_loader = (make_loader(EncodedDataset(dev, base.tokenizer, labels, config.max_length), base.tokenizer,
                              config.eval_batch_size, shuffle=False) if dev else None)
    steps_per_epoch = math.ceil(len(train_loader) / config.accumulate_grad_batches)
    total = steps_per_epoch * config.max_epochs
    if config.max_steps > 0:
        total = min(total, config.max_steps)
    module = AdapterClassifier(model, slot, config, total, extra_loss=extra_loss)
    cbs = list(callbacks or [])
    schedule = parse_unfreeze_schedule(config.unfreeze_schedule)
    if schedule is not None:
        cbs.append(ProgressiveUnfreezing(schedule))
    keep_best = KeepBestWeights(include_encoder=schedule is not None) if dev_loader is not None else None
    if keep_best is not None:
        cbs.append(keep_best)
        if config.early_stopping_patience:
            from lightning.pytorch.callbacks import EarlyStopping

            cbs.append(EarlyStopping("dev/accuracy", mode="max", patience=config.early_stopping_patience))
    if show_progress:
        from lightning.pytorch.callbacks import RichProgressBar

        cbs.append(RichProgressBar(leave=True))
    val_interval = None
    if dev_loader is not None and config.eval_every_n_steps:
        val_interval = min(config.eval_every_n_steps * config.accumulate_grad_batches, len(train_loader))
    trainer = L.Trainer(
        accelerator="auto", devices=1, max_epochs=config.max_epochs, max_steps=config.max_steps,
        precision=PRECISION[config.precision], gradient_clip_val=config.grad_clip_norm or None,
        accumulate_grad_batches=config.accumulate_grad_batches, callbacks=cbs, logger=logger or False,
        enable_checkpointing=False, enable_progress_bar=show_progress, enable_model_summary=False,
        log_every_n_steps=1, num_sanity_val_steps=0, val_check_interval=val_interval,
        limit_val_batches=1.0 if dev_loader is not None else 0, deterministic=False,
    )
    model.train()
    trainer.fit(module, train_loader, dev_loader)
    model.eval()
    if schedule is not None:
        # The adapter is only valid with the base layers it trained: keep them with the slot.
        model.slots[slot].base_state = unfrozen_base_state(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return trainer.global_step, (keep_best.best if keep_best else None)


def _mlflow_logger(registry: AdapterRegistry, run_id: str):
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name="continual", tracking_uri=registry.tracking_uri, run_id=run_id)


def train_task(registry: AdapterRegistry, task: str, config: TrainConfig | None = None, *, method: str = "lora",
               base_model: str | None = None, show_progress: bool = False, parent_run_id: str | None = None,
               model: AdapterModel | None = None, extra_tags: dict[str, str] | None = None,
               init_from: str | None = None) -> TrainResult:
    """Train `task`'s adapter of kind `method`, evaluate on dev and test, register a new version.

    Pass `model` to train inside an existing `AdapterModel` (a task sequence keeps every task in one
    model); otherwise a fresh one is built on the (shared) base encoder.  Nothing is registered
    unless training and evaluation succeed.
    """
    config = config or TrainConfig()
    kind = get_kind(method)
    spec = registry.task(task)
    data = load_task_data(spec)
    base = load_base_model(base_model)
    L.seed_everything(config.seed, workers=True, verbose=False)
    kind_config = kind.make_config(config.flat())
    if model is None:
        model = build_model(base)
    slot = task
    if slot in model.slots:
        model.remove_slot(slot)
    model.add_slot(slot, method, kind_config, spec.labels)
    extra_tags = dict(extra_tags or {})
    source = choose_source(registry, task, method, init_from)
    if source is not None:
        extra_tags.update(warm_start(registry, model, slot, base, source), init_from=init_from)
    train = subsample(data.train, config.train_limit, config.seed)

    run_id = registry.store.start_run(f"train-{task}", {"continual.task": task, "adapter_kind": method},
                                      parent_run_id=parent_run_id)
    try:
        registry.store.log_params(run_id, {
            **config.flat(), "method": method, "task": task, "base_model": base.model_id,
            "base_model_fingerprint": base.fingerprint, "data_fingerprint": spec.fingerprint,
            "train_examples": len(train), "dev_examples": len(data.dev), "test_examples": len(data.test),
            "per_task_parameters": kind.per_task_parameter_count(kind_config, base.encoder.config),
            "init_from": extra_tags.get("parent_adapter", "none"),
        })
        start = time.perf_counter()
        steps, best_dev = fit_slot(model, slot, base, config, train, data.dev,
                                   logger=_mlflow_logger(registry, run_id), show_progress=show_progress)
        seconds = time.perf_counter() - start
        metrics = {"train_seconds": seconds, "train_steps": steps}
        eval_kwargs = dict(max_length=config.max_length, batch_size=config.eval_batch_size, precision=config.precision)
        dev_acc = accuracy(model, slot, base.tokenizer, data.dev, **eval_kwargs) if data.dev else None
        test_acc = accuracy(model, slot, base.tokenizer, data.test, **eval_kwargs) if data.test else None
        if dev_acc is not None:
            metrics["dev_accuracy"] = dev_acc
        if test_acc is not None:
            metrics["test_accuracy"] = test_acc
        registry.store.log_metrics(run_id, {f"final/{k}": v for k, v in metrics.items()}, step=steps)
        version = _register(registry, run_id, model, slot, task, method, base, config, spec, metrics, extra_tags)
        registry.store.end_run(run_id, "FINISHED")
    except BaseException:
        registry.store.end_run(run_id, "FAILED")
        raise
    return TrainResult(task, version, run_id, dev_acc, test_acc, seconds, steps, model, slot)


def _register(registry: AdapterRegistry, run_id: str, model: AdapterModel, slot: str, task: str, method: str,
              base: BaseModel, config: TrainConfig, spec: TaskSpec, metrics: dict[str, float],
              extra_tags: dict[str, str] | None) -> AdapterVersion:
    kind = get_kind(method)
    adapter_config = AdapterConfig(
        task=task, kind=method, kind_config=model.slots[slot].config.to_dict(), labels=list(spec.labels),
        base_model_id=base.model_id, base_model_fingerprint=base.fingerprint, max_length=config.max_length,
    )
    tags = {
        "adapter_kind": method, "base_model_id": base.model_id, "base_model_fingerprint": base.fingerprint,
        "data_fingerprint": spec.fingerprint, **(extra_tags or {}),
        **({"base_modified": "true", "unfreeze_schedule": config.unfreeze_schedule}
           if model.slots[slot].base_state else {}),
        **{f"{METRIC_PREFIX}{k}": f"{v:.6g}" for k, v in metrics.items()},
    }
    with tempfile.TemporaryDirectory(prefix="continual-save-") as tmp:
        checksums = write_adapter_dir(Path(tmp) / "adapter", model, slot, adapter_config)
        if SHARED_FILE in checksums:
            # The shared part (e.g. the shared B) becomes a version of its own registered model.
            group = model.slots[slot].config.to_dict().get("share_group", "default")
            shared_name = f"{method}--{group}"
            shared_dir = Path(tmp) / "shared"
            shared_dir.mkdir()
            (Path(tmp) / "adapter" / SHARED_FILE).rename(shared_dir / SHARED_FILE)
            registry.store.log_artifacts(run_id, shared_dir, "shared")
            number = registry.add_shared_version(shared_name, run_id, "shared",
                                                 {f"{SHA_PREFIX}{SHARED_FILE}": checksums.pop(SHARED_FILE),
                                                  "trained_with_task": task})
            tags["shared_part"] = f"{shared_name}:{number}"
        registry.store.log_artifacts(run_id, Path(tmp) / "adapter", "adapter")
        tags.update({f"{SHA_PREFIX}{name}": sha for name, sha in checksums.items()})
    return registry.add_version(task, run_id, "adapter", tags, description=f"{method} adapter for {task}")
