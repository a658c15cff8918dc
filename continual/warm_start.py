"""Warm start: initialise a new task's adapter from a related task's registered adapter.

`--init-from auto` takes the nearest related task (registry.related) that has an adapter of the
same kind and is related enough (`related_margin`, a TrainConfig setting: a task unlike every registered
one starts fresh, since a distant task's adapter can be a worse start than a random one); `--init-from
TASK` names it; `none` trains from scratch.  The adapter weights are copied when their shapes fit;
the head is copied only when the label sets are identical (same classes in the same order), otherwise
it starts fresh.  The lineage goes into the version's tags.
"""
from __future__ import annotations

import warnings

from modeling.manifest import SHARED_FILE, WEIGHTS_FILE, read_manifest, verify_checksums
from modeling.base_model import BaseModel
from modeling.kinds import get_kind
from modeling.model import AdapterModel
from registry import tags as T
from registry.registry import AdapterRegistry, AdapterVersion
from tasks.errors import ContinualError, ContinualWarning


class WarmStartError(ContinualError):
    pass


def related_sources(registry: AdapterRegistry, task: str, margin: float) -> tuple[list[str], str]:
    """Registered tasks close enough to `task` to start it from, nearest first: those whose cosine
    (registry.related) beats `task`'s mean cosine to every registered task by `margin` (all of them when
    `margin` < 0; see TrainConfig.related_margin), and a phrase naming the nearest task for a warning when none
    is close enough."""
    related = registry.related(task, k=len(registry.tasks()))
    if not related:
        return [], "no other task is registered"
    if len(related) == 1 and margin >= 0:  # no mean to beat: the profiles of two tasks, centred, point apart
        warnings.warn(f"only one other task ({related[0].task}) is registered, so how related it is can't be "
                      f"judged; starting '{task}' from it anyway (register more tasks, or --init-from none)",
                      ContinualWarning, stacklevel=3)
        return [related[0].task], ""
    mean = sum(r.score for r in related) / len(related)
    close = [r.task for r in related if margin < 0 or r.score - mean >= margin]
    nearest = related[0]
    return close, (f"no registered task is related enough (nearest: {nearest.task}, {nearest.score - mean:+.2f} "
                   f"above the mean cosine, below related_margin={margin})")


def choose_source(registry: AdapterRegistry, task: str, method: str, init_from: str | None,
                  margin: float = -1.0) -> AdapterVersion | None:
    """The adapter version to start from, or None to train from scratch.  `auto` considers only the related
    tasks that beat the mean by `margin` (related_sources)."""
    if init_from in (None, "", "none"):
        return None
    if init_from == "auto":
        close, why_none = related_sources(registry, task, margin)
        for name in close:
            # A quarantined version fails verification (`continual adapters verify --repair`): never a source.
            versions = [v for v in registry.versions(name) if T.QUARANTINED not in v.tags]
            if versions and versions[-1].kind == method:
                return versions[-1]
        why = f"no related task has a '{method}' adapter yet" if close else why_none
        warnings.warn(f"--init-from auto: {why}; training {task} from scratch", ContinualWarning, stacklevel=2)
        return None
    if init_from == task:
        raise WarmStartError(f"--init-from {init_from} names the task being trained; name another task, auto or none")
    source = registry.resolve(init_from)
    if source.kind != method:
        raise WarmStartError(
            f"--init-from {init_from}: its adapter is '{source.kind}' but this training uses '{method}'; "
            f"train with --method {source.kind} or pick a task with a {method} adapter"
        )
    return source


def warm_start(registry: AdapterRegistry, model: AdapterModel, slot: str, base: BaseModel,
               source: AdapterVersion) -> dict[str, str]:
    """Copy `source`'s adapter (and, for identical label sets, its head) into `slot`; returns lineage tags."""
    from safetensors.torch import load_file

    folder = registry.local_adapter_dir(source)
    # Every recorded file, the config included: its label order and base model id decide what is copied.
    verify_checksums(folder, {k: v for k, v in source.checksums.items() if k != SHARED_FILE}, f"adapter {source.ref}")
    config = read_manifest(folder)
    if config.base_model_fingerprint != base.fingerprint:
        raise WarmStartError(
            f"--init-from {source.ref}: it was trained on another base model ('{config.base_model_id}'); "
            f"warm starts need the same base, train with --base-model {config.base_model_id} or use --init-from none"
        )
    tensors = load_file(str(folder / WEIGHTS_FILE))
    adapter = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
    try:
        get_kind(config.kind).load_slot_state(model, slot, adapter)
    except (RuntimeError, ValueError) as err:
        raise WarmStartError(
            f"--init-from {source.ref}: its adapter's shapes do not fit this one ({str(err).splitlines()[0][:120]}); "
            f"use the same adapter settings (e.g. r) or --init-from none"
        ) from None
    head_copied = list(config.labels) == list(model.slots[slot].labels)
    if head_copied:
        model.heads[slot].load_state_dict({k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")})
    return {"parent_adapter": source.ref, "warm_start_head": "copied" if head_copied else "fresh"}
