"""Train one task's adapter and register it as a new version: the `continual train` job."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import lightning as L
import torch

from continual.augment import AugmentedDataset, parse_augment
from continual.config import ConfigError, TrainConfig
from continual.data import EncodedDataset, make_loader, subsample
from continual.evaluate import accuracy
from continual.module import AdapterClassifier
from continual.trainer import build_trainer, fast_path, is_main_process, mlflow_logger, total_steps
from continual.unfreeze import unfrozen_base_state
from continual.warm_start import choose_source, warm_start
from modeling.base_model import BaseModel, load_base_model
from modeling.hardware import apply_num_threads, detect
from modeling.kinds import get_kind
from modeling.manifest import AdapterManifest
from modeling.model import AdapterModel
from registry import tags as T
from registry.registry import AdapterRegistry, AdapterVersion, Run
from registry.shared_parts import SharedPart, shared_part_name
from tasks.errors import ContinualError
from tasks.fingerprint import data_fingerprint
from tasks.loaders import Example, load_split
from tasks.spec import TaskSpec

class TrainError(ContinualError):
    pass


# A task registered without a dev split gets one held out of train, for early stopping and keep-best:
# 10% of train (at most 500 examples), the same slice every time (a fixed seed, independent of `seed`, so
# runs with different seeds compare on the same dev).  Tasks under DEV_HOLDOUT_MIN_TRAIN examples keep
# all of train and train without dev.
DEV_HOLDOUT_FRACTION = 0.1
DEV_HOLDOUT_MAX = 500
DEV_HOLDOUT_MIN_TRAIN = 20
DEV_HOLDOUT_SEED = 1234


@dataclass
class TaskData:
    spec: TaskSpec
    train: list[Example]
    dev: list[Example] = field(default_factory=list)
    test: list[Example] = field(default_factory=list)
    dev_source: str = "dev"  # "dev" (the task's dev split), "train-holdout" (held out of train) or "none"


def dev_note(data: TaskData) -> str:
    """What a task without a dev split trains with instead, in one line."""
    if data.dev_source == "train-holdout":
        return (f"no dev split: {len(data.dev)} of the {len(data.train) + len(data.dev)} training examples are held "
                f"out as dev (early stopping, best weights); register the task with --dev to choose them")
    return (f"no dev split and under {DEV_HOLDOUT_MIN_TRAIN} training examples: training without dev "
            f"(no early stopping; the last weights are kept)")


def hold_out_dev(train: list[Example]) -> tuple[list[Example], list[Example]]:
    """(train without the held-out slice, the slice): DEV_HOLDOUT_FRACTION of train, seeded, order kept."""
    import random

    n = min(DEV_HOLDOUT_MAX, max(1, round(DEV_HOLDOUT_FRACTION * len(train))))
    held = set(random.Random(DEV_HOLDOUT_SEED).sample(range(len(train)), n))
    return [e for i, e in enumerate(train) if i not in held], [e for i, e in enumerate(train) if i in held]


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
    splits = {s: load_split(spec, s) for s in ("train", "dev", "test") if spec.split_path(s)}
    current = data_fingerprint(splits)
    if spec.fingerprint and current != spec.fingerprint:
        raise TrainError(
            f"the data of task '{spec.name}' changed since it was registered (fingerprint "
            f"{spec.fingerprint[:12]}… is now {current[:12]}…); register it again under a new name"
        )
    train, dev, source = splits["train"], splits.get("dev", []), "dev"
    if not dev:
        if len(train) >= DEV_HOLDOUT_MIN_TRAIN:
            train, dev = hold_out_dev(train)
            source = "train-holdout"
        else:
            source = "none"
    return TaskData(spec, train, dev, splits.get("test", []), dev_source=source)


def build_model(base: BaseModel) -> AdapterModel:
    """A training model on a private copy of the base weights (a `CausalAdapterModel` on a causal LM).

    Adapters attach to the encoder in place (peft layers, forward hooks), so training never shares
    the process-wide inference encoder: a slot active in one model must not leak into the other.
    """
    if base.causal_lm:
        from modeling.generation import CausalAdapterModel

        return CausalAdapterModel(base.fresh_encoder(), base.tokenizer)
    return AdapterModel(base.fresh_encoder())


def check_base_for_task(spec: TaskSpec, base: BaseModel) -> None:
    """A generation task needs a causal LM; say so in one line naming the base model and the fix."""
    if spec.kind == "generation" and not base.causal_lm:
        raise TrainError(
            f"task '{spec.name}' is a generation task but base model '{base.model_id}' is not a causal language "
            f"model (AutoModelForCausalLM); pass --base-model smollm2-135m or another causal LM"
        )


def resolved_head_init(kind: str, head_init: str, head_copied: bool = False) -> str:
    """How training starts the head: `head_init`, or for `auto` the kind's default_head_init, except that a
    head a warm start copied (same label set, so it already answers this task) is kept as it is."""
    if head_init != "auto":
        return head_init
    return "fresh" if head_copied else get_kind(kind).default_head_init


def begin_training(model: AdapterModel, slot: str, extra_loss):
    """Training of `slot` starts: the method's extra loss (EWC's penalty, ...) plus the term `slot`'s adapter
    kind adds (hyper-lora's output regulariser); None when there is neither."""
    kind_loss = model.begin_training(slot)
    if kind_loss is None or extra_loss is None:
        return kind_loss or extra_loss
    return lambda: extra_loss() + kind_loss()


def fit_slot(model: AdapterModel, slot: str, base: BaseModel, config: TrainConfig, train: list[Example],
             dev: list[Example], *, logger=None, show_progress: bool = False, extra_loss=None,
             callbacks: list | None = None, head_copied: bool = False) -> tuple[int, float | None]:
    """Train `slot` of `model` in place; returns (optimizer steps, best dev accuracy or None).

    `head_copied`: a warm start copied the slot's head from a task with the same labels (head_init=auto keeps it).
    """
    apply_num_threads(config.num_threads)  # here, not only in train_task: every caller trains with the set threads
    extra_loss = begin_training(model, slot, extra_loss)
    if getattr(model, "is_causal_lm", False):  # a decoder: completion tokens (continual.lm_training)
        from continual.lm_training import fit_lm_slot

        if config.head_init == "probe":
            raise ConfigError(f"head_init={config.head_init} needs a classification head; a causal LM answers in "
                              f"text and has none: drop --set head_init")
        return fit_lm_slot(model, slot, config, train, dev, logger=logger, show_progress=show_progress,
                           extra_loss=extra_loss, callbacks=callbacks)
    labels = model.slots[slot].labels
    if resolved_head_init(model.slots[slot].kind, config.head_init, head_copied) == "probe":
        from continual.probe import init_head_by_probe

        init_head_by_probe(model, slot, base.tokenizer, train, config.max_length, config.resolved_precision, config.seed)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.trainable_parameters(slot):
        p.requires_grad_(True)
    augment = parse_augment(config.augment)
    train_set = (AugmentedDataset(train, base.tokenizer, labels, config.max_length, augment, config.seed)
                 if augment is not None else EncodedDataset(train, base.tokenizer, labels, config.max_length))
    # Under DDP Lightning shards the batches with its DistributedSampler, which a custom batch sampler
    # (the length buckets) cannot take: plain seeded shuffling there.
    train_loader = make_loader(train_set, base.tokenizer, config.batch_size, shuffle=True, seed=config.seed,
                               bucketed=config.strategy != "ddp")
    dev_loader = (make_loader(EncodedDataset(dev, base.tokenizer, labels, config.max_length), base.tokenizer,
                              config.eval_batch_size, shuffle=False) if dev else None)
    module = AdapterClassifier(model, slot, config, total_steps(config, len(train_loader)), extra_loss=extra_loss)
    trainer, keep_best = build_trainer(config, train_batches=len(train_loader), has_dev=dev_loader is not None,
                                       logger=logger, show_progress=show_progress, callbacks=callbacks)
    if logger is not None:  # what `max_epochs: auto` and the schedule came to for this data
        logger.log_hyperparams({"max_epochs_used": trainer.max_epochs, "planned_steps": module.total_steps})
    model.train()
    with fast_path(model, config, base_trains=model.slots[slot].kind == "full"):
        trainer.fit(module, train_loader, dev_loader)
    model.eval()
    if config.unfreeze_schedule:
        # The adapter is only valid with the base layers it trained: keep them with the slot.
        model.slots[slot].base_state = unfrozen_base_state(model)
    for p in model.parameters():
        p.requires_grad_(False)
    return trainer.global_step, (keep_best.best if keep_best else None)


def run_params(config: TrainConfig, base: BaseModel, spec: TaskSpec, **extra) -> dict:
    """What every training run logs as params: the whole config, the precision and threads actually
    used and the hardware that decided them, the base model and the data."""
    return {**config.flat(), "precision_used": config.resolved_precision, "hardware": detect().description,
            "num_threads_used": torch.get_num_threads(), "base_model": base.model_id,
            "base_model_fingerprint": base.fingerprint, "data_fingerprint": spec.fingerprint, **extra}


def evaluate_and_log(run, model: AdapterModel, slot: str, base: BaseModel, config: TrainConfig, data: TaskData,
                     steps: int, seconds: float) -> dict[str, float]:
    """Dev and test accuracy of `slot`, logged as final/* metrics with the training time and steps."""
    metrics = {"train_seconds": seconds, "train_steps": steps}
    eval_kwargs = dict(max_length=config.max_length, batch_size=config.eval_batch_size,
                       precision=config.resolved_precision)
    for split, examples in (("dev", data.dev), ("test", data.test)):
        if examples and getattr(model, "is_causal_lm", False):
            from continual.lm_training import lm_evaluate

            # accuracy = exact match (generation) or label accuracy, plus token accuracy and perplexity
            found = lm_evaluate(model, slot, examples, **eval_kwargs)
            metrics.update({f"{split}_{k}": v for k, v in found.items()})
        elif examples:
            metrics[f"{split}_accuracy"] = accuracy(model, slot, base.tokenizer, examples, **eval_kwargs)
    run.log_metrics({f"final/{k}": v for k, v in metrics.items()}, step=steps)
    return metrics


def train_task(registry: AdapterRegistry, task: str, config: TrainConfig | None = None, *, method: str = "lora",
               base_model: str | None = None, show_progress: bool = False, parent_run_id: str | None = None,
               model: AdapterModel | None = None, extra_tags: dict[str, str] | None = None,
               init_from: str | None = None, announce: Callable[[str], None] | None = None) -> TrainResult:
    """Train `task`'s adapter of kind `method`, evaluate on dev and test, register a new version.

    Pass `model` to train inside an existing `AdapterModel` (a task sequence keeps every task in one
    model); otherwise a fresh one is built on the (shared) base encoder.  Nothing is registered
    unless training and evaluation succeed.  `announce(line)` hears the precision line once the task,
    its data and the base model have been checked, just before training starts.
    """
    config = config or TrainConfig()
    apply_num_threads(config.num_threads)
    standalone = model is None  # not inside a sequence's model: the task joins its share group's lineage
    kind = get_kind(method)
    spec = registry.task(task)
    data = load_task_data(spec)
    base = load_base_model(base_model)
    check_base_for_task(spec, base)
    L.seed_everything(config.seed, workers=True, verbose=False)
    kind_config = kind.make_config(config.flat())
    if model is None:
        model = build_model(base)
    slot = task
    if slot in model.slots:
        model.remove_slot(slot)
    model.add_slot(slot, method, kind_config, spec.labels)
    extra_tags = dict(extra_tags or {})
    source = choose_source(registry, task, method, init_from, config.related_margin)
    if source is not None:
        extra_tags.update(warm_start(registry, model, slot, base, source))
        extra_tags[T.INIT_FROM] = str(init_from)
    shared_from = join_share_group(registry, model, slot, kind, kind_config, config, source) if standalone else None
    train = subsample(data.train, config.train_limit, config.seed)
    if announce is not None and is_main_process():
        from continual.trainer import precision_note

        announce(precision_note(config))
        if data.dev_source != "dev":
            announce(dev_note(data))

    per_task = kind.per_task_parameter_count(kind_config, base.encoder.config)

    def fit(run) -> tuple[int, float | None]:
        return fit_slot(model, slot, base, config, train, data.dev, show_progress=show_progress,
                        logger=mlflow_logger(run) if run is not None else None,
                        head_copied=extra_tags.get(T.WARM_START_HEAD) == "copied")

    outcome = run_training(registry, fit, model=model, slot=slot, base=base, config=config, data=data,
                           run_name=f"train-{task}", tags={T.RUN_TASK: task, T.ADAPTER_KIND: method},
                           parent=parent_run_id, register=True, extra_tags=extra_tags, shared_from=shared_from,
                           params=dict(method=method, task=task, train_examples=len(train),
                                       init_from=extra_tags.get(T.PARENT_ADAPTER, "none"),
                                       per_task_parameters=per_task))
    return TrainResult(task, outcome.version, outcome.run_id, outcome.metrics.get("dev_accuracy"),
                       outcome.metrics.get("test_accuracy"), outcome.seconds, outcome.steps, model, slot)


@dataclass
class TrainingOutcome:
    """One training run: its id, the version it registered (None when it registers nothing) and its figures."""

    run_id: str
    version: AdapterVersion | None
    metrics: dict[str, float]
    seconds: float
    steps: int


def run_training(registry: AdapterRegistry, fit: Callable[[Run], tuple[int, float | None]], *, model: AdapterModel,
                 slot: str, base: BaseModel, config: TrainConfig, data: TaskData, run_name: str,
                 tags: dict[str, str], parent: str | None, register: bool, extra_tags: dict[str, str] | None = None,
                 params: dict | None = None, shared_from: SharedPart | None = None) -> TrainingOutcome:
    """The one run lifecycle every training goes through (`continual train`, each method of a sequence).

    In an MLflow run: log the params, `fit(run) -> (steps, best dev)`, evaluate `slot` on dev and test,
    and (if `register`) register it as a new version of `data.spec`'s task.  The run ends FINISHED,
    FAILED or KILLED (`AdapterRegistry.run`); nothing is registered unless training and evaluation succeed.
    """
    if not is_main_process():
        # An extra process of Lightning's DDP launcher (it re-ran this command): it trains its shard of every
        # batch with the main process and ends there; only the main process logs, evaluates and registers.
        fit(None)
        raise SystemExit(0)
    tags = dict(tags)
    if not register:
        tags[T.REGISTERED] = "false"
    with registry.run(run_name, tags, parent=parent) as run:
        run.log_params(run_params(config, base, data.spec, dev_examples=len(data.dev), dev_source=data.dev_source,
                                  **({"dev_holdout_seed": DEV_HOLDOUT_SEED} if data.dev_source == "train-holdout" else {}),
                                  test_examples=len(data.test), **(params or {})))
        start = time.perf_counter()
        steps, _ = fit(run)
        seconds = time.perf_counter() - start
        metrics = evaluate_and_log(run, model, slot, base, config, data, steps, seconds)
        version = (register_slot(registry, run, model, slot, base, config, data.spec, metrics, extra_tags,
                                 shared_from) if register else None)
    return TrainingOutcome(run.run_id, version, metrics, seconds, steps)


def register_slot(registry: AdapterRegistry, run, model: AdapterModel, slot: str, base: BaseModel,
                  config: TrainConfig, spec: TaskSpec, metrics: dict[str, float],
                  extra_tags: dict[str, str] | None, shared_from: SharedPart | None = None) -> AdapterVersion:
    """Register `slot` (trained for task `spec`) as a new adapter version, with lineage and metrics."""
    info = model.slots[slot]
    manifest = AdapterManifest(
        task=spec.name, kind=info.kind, kind_config=info.config.to_dict(), labels=list(spec.labels),
        base_model_id=base.model_id, base_model_fingerprint=base.fingerprint, max_length=config.max_length,
        extra=model.manifest_extra(slot) if hasattr(model, "manifest_extra") else {},
    )
    tags = {
        T.ADAPTER_KIND: info.kind, T.BASE_MODEL_ID: base.model_id, T.BASE_MODEL_FINGERPRINT: base.fingerprint,
        T.DATA_FINGERPRINT: spec.fingerprint, **(extra_tags or {}),
        **({T.BASE_MODIFIED: "true", T.UNFREEZE_SCHEDULE: config.unfreeze_schedule} if info.base_state else {}),
        **{f"{T.METRIC_PREFIX}{k}": f"{v:.6g}" for k, v in metrics.items()},
    }
    return registry.register_adapter(run, model, slot, manifest, tags, shared_from=shared_from)


def join_share_group(registry: AdapterRegistry, model: AdapterModel, slot: str, kind, kind_config, config: TrainConfig,
                     source: AdapterVersion | None) -> SharedPart | None:
    """A standalone training of a shared kind starts from its share group's shared part as registered: the
    version a warm-start source recorded, else `shared_version`, else the group's current one (None: the
    group has none yet, and this training creates version 1).  Loaded into `slot`, it trains only with
    train_shared=true (registry/shared_parts.py says how versions follow)."""
    if not kind.has_shared_part:
        return None
    group = kind.share_group_of(kind_config)
    if source is not None and source.tags.get(T.SHARED_PART):
        name, number = source.tags[T.SHARED_PART].rsplit(":", 1)
        if name != shared_part_name(kind.name, group):
            raise TrainError(f"--init-from {source.ref}: it was trained with shared part {name}, but this training's "
                             f"share group is '{group}'; set --set share_group={name.split('--', 1)[-1]} or use "
                             f"--init-from none")
        part = registry.shared_part(kind.name, group, int(number))
    else:
        part = registry.shared_part(kind.name, group, config.shared_version or None)  # a missing version: one line
    if part is not None:
        kind.load_shared_state(model, slot, part.state)
    return part
