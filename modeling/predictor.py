"""Inference: a loaded adapter version that answers `predict(texts)`, and mixed-task batches.

Never imports Lightning or training code.  All predictors on the same base model share one
`AdapterModel` host (one base encoder object per process); each version is a slot in it.  The
number of loaded slots is bounded (`max_loaded_adapters`): past the bound the least recently used
slot is removed from its host (its modules deleted, peft LoRA layers included) and reloaded from
its folder when it is used again.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from modeling.manifest import AdapterManifest
from modeling.base_model import BaseModel
from modeling.hardware import autocast, resolve_precision
from modeling.model import AdapterModel, mean_pool

_hosts_lock = threading.RLock()
_hosts: dict[str, AdapterModel] = {}  # base fingerprint -> host holding every loaded slot

MAX_LOADED_ENV = "CONTINUAL_MAX_LOADED_ADAPTERS"
DEFAULT_MAX_LOADED = 32


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float  # softmax probability of `label`


def host_for(base: BaseModel) -> AdapterModel:
    """The process-wide inference model on `base` (created on first use)."""
    with _hosts_lock:
        host = _hosts.get(base.fingerprint)
        if host is None:
            host = AdapterModel(base.encoder).eval()
            _hosts[base.fingerprint] = host
        return host


_private_hosts: dict[tuple[str, str], AdapterModel] = {}


def private_host(base: BaseModel, slot: str) -> AdapterModel:
    """An inference model on its own copy of the base, for an adapter that changed base layers."""
    with _hosts_lock:
        key = (base.fingerprint, slot)
        if key not in _private_hosts:
            _private_hosts[key] = AdapterModel(base.fresh_encoder()).eval()
        return _private_hosts[key]


# -- bounded loaded slots (LRU) -----------------------------------------------------------------------
_max_loaded: int = int(os.environ.get(MAX_LOADED_ENV, DEFAULT_MAX_LOADED))
# (id of host, slot) -> (host, loader); most recently used last.  A loader re-adds the slot to its host.
_lru: "OrderedDict[tuple[int, str], tuple[AdapterModel, Callable[[], None]]]" = OrderedDict()


def set_max_loaded_adapters(limit: int) -> None:
    """Bound the adapter slots loaded in this process (all hosts together); evicts at once if over."""
    global _max_loaded
    if int(limit) < 1:
        raise ValueError(f"max_loaded_adapters={limit} must be >= 1 (set {MAX_LOADED_ENV} or call "
                         f"set_max_loaded_adapters with a positive number)")
    with _hosts_lock:
        _max_loaded = int(limit)
        _evict(pinned=set())


def max_loaded_adapters() -> int:
    return _max_loaded


def loaded_slots() -> list[str]:
    """Slots loaded for inference in this process, least recently used first."""
    with _hosts_lock:
        return [slot for _, slot in _lru]


def ensure_loaded(entries: Sequence[tuple[AdapterModel, str, Callable[[], None]]]) -> None:
    """Make every (host, slot) in `entries` loaded (calling its loader when it is not), mark them most
    recently used, and evict the least recently used other slots beyond `max_loaded_adapters`."""
    if len(entries) > _max_loaded:
        raise ValueError(f"{len(entries)} adapters cannot be loaded at once with max_loaded_adapters="
                         f"{_max_loaded}; raise it ({MAX_LOADED_ENV}) or pass fewer tasks per batch")
    with _hosts_lock:
        for host, slot, loader in entries:
            with host.lock:
                if slot not in host.slots:
                    try:
                        loader()  # all or nothing (load_adapter_into)
                    except BaseException:
                        _drop_if_empty_private(host)
                        raise
                    host.eval()
            key = (id(host), slot)
            _lru[key] = (host, loader)
            _lru.move_to_end(key)
        _evict(pinned={(id(h), s) for h, s, _ in entries})


def _evict(pinned: set[tuple[int, str]]) -> None:
    while len(_lru) > _max_loaded:
        victim = next((k for k in _lru if k not in pinned), None)
        if victim is None:
            return
        host, _ = _lru.pop(victim)
        with host.lock:
            if victim[1] in host.slots:
                host.remove_slot(victim[1])  # the kind's drop() deletes its modules
        _drop_if_empty_private(host)


def _drop_if_empty_private(host: AdapterModel) -> None:
    """A private host (an adapter that trained base layers) is its own copy of the base: once it holds no
    slot, drop it all."""
    for key, private in list(_private_hosts.items()):
        if private is host and not private.slots:
            del _private_hosts[key]


class Predictor:
    def __init__(self, host: AdapterModel, slot: str, base: BaseModel, config: AdapterManifest,
                 task: str, version: int, precision: str = "auto", loader: Callable[[], None] | None = None):
        self.host = host
        self.slot = slot
        self.base = base
        self.config = config
        self.task = task
        self.version = version
        self.labels = list(config.labels)
        # Re-adds the slot when it was evicted (None: the caller keeps it loaded itself).
        self.loader = loader
        # "auto": bf16 autocast only where the hardware does bf16 natively (modeling.hardware).
        self.precision = resolve_precision(precision)

    def __repr__(self) -> str:
        return f"Predictor({self.task}:{self.version}, kind={self.config.kind}, labels={self.labels})"

    def ensure_loaded(self) -> None:
        if self.loader is not None:
            ensure_loaded([(self.host, self.slot, self.loader)])

    @torch.no_grad()
    def predict_proba(self, texts: Sequence[str] | str, text_pairs: Sequence[str] | None = None,
                      batch_size: int = 32) -> np.ndarray:
        """Class probabilities (N, num_labels), columns in `self.labels` order."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = []
        for start in range(0, len(texts), batch_size):
            chunk = texts[start : start + batch_size]
            pairs = list(text_pairs[start : start + batch_size]) if text_pairs is not None else None
            enc = self.base.tokenizer(chunk, pairs, padding=True, truncation=True,
                                      max_length=self.config.max_length, return_tensors="pt")
            with self.host.lock:
                self.ensure_loaded()
                self.host.eval()
                with autocast(self.precision):
                    logits = self.host(self.slot, **enc)
            out.append(torch.softmax(logits.float(), dim=-1).numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), dtype=np.float32)

    def predict(self, texts: Sequence[str] | str, text_pairs: Sequence[str] | None = None,
                batch_size: int = 32) -> list[Prediction]:
        """One `Prediction(label, score)` per text."""
        probs = self.predict_proba(texts, text_pairs, batch_size)
        best = probs.argmax(axis=1)
        return [Prediction(self.labels[i], float(p[i])) for i, p in zip(best, probs)]

    __call__ = predict


# -- mixed-task batches -------------------------------------------------------------------------------
def _lora_mixed_hooks(host: AdapterModel, adapter_names: list[str]) -> list:
    """Add, on every peft LoRA layer, each row's own adapter delta `scaling · B_i A_i x` to the frozen
    base output, with all adapters of the batch in two batched matmuls per layer.

    peft's own mixed-batch path (`LoraLayer._mixed_batch_forward`, `adapter_names=...`) loops over the
    adapters in Python: per layer and adapter a row gather, two small matmuls and a scatter-add; with
    8 adapters in a batch of 64 that cost a mixed batch ~30% of single-adapter throughput on CPU.
    Here the A and B matrices of the batch's adapters are stacked once per call (rank padded with
    zeros, scaling folded into B; a layer an adapter does not adapt gets zeros), gathered per row, and
    applied with `bmm` (the BGMV idea of punica/S-LoRA): (B,T,in)·(B,in,r) -> (B,T,r)·(B,r,out).
    The layers' peft adapters are switched off meanwhile (`activate(None)`), so peft adds nothing itself.
    """
    from peft.tuners.lora import LoraLayer

    slots = list(dict.fromkeys(adapter_names))
    rows = torch.tensor([slots.index(name) for name in adapter_names])  # (B,) adapter index per row
    handles = []
    for layer in host.encoder.modules():
        if not isinstance(layer, LoraLayer) or not any(s in layer.lora_A for s in slots):
            continue
        if any(s in getattr(layer, "lora_variant", {}) for s in slots):
            raise NotImplementedError("mixed batches of LoRA variants (DoRA, ...) are not supported")
        base = layer.get_base_layer()
        in_f, out_f = base.in_features, base.out_features
        rank = max(layer.r[s] for s in slots if s in layer.lora_A)
        a = torch.zeros(len(slots), rank, in_f)  # (n, r, in)
        b = torch.zeros(len(slots), out_f, rank)  # (n, out, r), scaling folded in
        for i, s in enumerate(slots):
            if s in layer.lora_A:
                r = layer.r[s]
                a[i, :r] = layer.lora_A[s].weight.detach().float()
                b[i, :, :r] = layer.lora_B[s].weight.detach().float() * layer.scaling[s]
        a_rows, b_rows = a[rows].transpose(1, 2), b[rows].transpose(1, 2)  # (B, in, r), (B, r, out)

        def hook(module, args, output, a_rows=a_rows, b_rows=b_rows):
            x = args[0]  # (B, T, in)
            delta = torch.bmm(torch.bmm(x.to(a_rows.dtype), a_rows), b_rows)  # (B, T, out)
            return output + delta.to(output.dtype)

        handles.append(layer.register_forward_hook(hook))
    return handles


def _peft_mixed_hooks(host: AdapterModel, adapter_names: list[str]) -> list:
    """peft's own mixed-batch LoRA: pass `adapter_names` to every LoRA layer's forward, as
    `PeftModel.forward(adapter_names=...)` does (our host is not a PeftModel).  Kept as the reference
    the batched path is measured against (bench/inference.py)."""
    from peft.tuners.lora import LoraLayer

    def hook(module, args, kwargs):
        kwargs["adapter_names"] = adapter_names
        return args, kwargs

    return [m.register_forward_pre_hook(hook, with_kwargs=True)
            for m in host.encoder.modules() if isinstance(m, LoraLayer)]


MIXED_LORA = {"bmm": _lora_mixed_hooks, "peft": _peft_mixed_hooks}


def mixed_logits(host: AdapterModel, slots: Sequence[str], input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, lora_impl: str = "bmm", **extra) -> list[torch.Tensor]:
    """Logits per row (each (num_labels of its slot,)) for a batch whose row i belongs to `slots[i]`.

    Rows of `lora` slots go through the encoder together in one forward pass (batched per-row LoRA);
    rows of other kinds run as one sub-batch per slot, since their modules change the encoder's
    inputs or hidden states per forward.  The caller holds `host.lock` and has the slots loaded.
    """
    out: list[torch.Tensor | None] = [None] * len(slots)
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask, **extra}
    lora_rows = [i for i, s in enumerate(slots) if host.slots[s].kind == "lora"]
    if lora_rows:
        rows = torch.tensor(lora_rows)
        sub = {k: v[rows] for k, v in inputs.items()}
        host.activate(None)  # every kind off: the per-row adapter names decide, not the active slot
        names = [slots[i] for i in lora_rows]
        handles = MIXED_LORA[lora_impl](host, names)
        try:
            hidden = host.encoder(**sub).last_hidden_state  # (b, T, H)
        finally:
            for h in handles:
                h.remove()
        pooled = mean_pool(hidden, sub["attention_mask"])  # (b, H)
        _heads_per_slot(host, names, pooled, lora_rows, out)
    other = [i for i, s in enumerate(slots) if host.slots[s].kind != "lora"]
    for slot in dict.fromkeys(slots[i] for i in other):
        rows = [i for i in other if slots[i] == slot]
        index = torch.tensor(rows)
        logits = host(slot, **{k: v[index] for k, v in inputs.items()})
        for j, i in enumerate(rows):
            out[i] = logits[j]
    return out  # type: ignore[return-value]


def _heads_per_slot(host: AdapterModel, names: list[str], pooled: torch.Tensor, rows: list[int],
                    out: list) -> None:
    """Apply each slot's own head to its pooled rows (heads differ in width, so one call per slot)."""
    for slot in dict.fromkeys(names):
        picked = [j for j, n in enumerate(names) if n == slot]
        logits = host.heads[slot](pooled[torch.tensor(picked)])  # (n_slot, num_labels)
        for k, j in enumerate(picked):
            out[rows[j]] = logits[k]


@torch.no_grad()
def predict_mixed(items: Sequence[tuple[Predictor, str]], batch_size: int = 32,
                  lora_impl: str = "bmm") -> list[Prediction]:
    """One prediction per (predictor, text), batching rows of different adapters together.

    Rows are grouped by host (one base model object), tokenised with each adapter's own max length,
    padded together and run `batch_size` rows at a time through `mixed_logits`.  At most
    `max_loaded_adapters` distinct adapters take part in one batch; more are served in turns.
    """
    results: list[Prediction | None] = [None] * len(items)
    by_host: dict[int, list[int]] = {}
    for i, (p, _) in enumerate(items):
        by_host.setdefault(id(p.host), []).append(i)
    for rows in by_host.values():
        for group in _groups_within_bound([items[i][0] for i in rows], rows):
            _predict_rows(items, group, batch_size, results, lora_impl)
    return results  # type: ignore[return-value]


def _groups_within_bound(predictors: list[Predictor], rows: list[int]) -> list[list[int]]:
    """Split `rows` so that no group uses more distinct slots than may be loaded at once."""
    groups: list[list[int]] = []
    slots: list[set[str]] = []
    for p, i in zip(predictors, rows):
        for group, used in zip(groups, slots):
            if p.slot in used or len(used) < _max_loaded:
                group.append(i)
                used.add(p.slot)
                break
        else:
            groups.append([i])
            slots.append({p.slot})
    return groups


def _predict_rows(items: Sequence[tuple[Predictor, str]], rows: list[int], batch_size: int,
                  results: list, lora_impl: str) -> None:
    host = items[rows[0]][0].host
    tokenizer = items[rows[0]][0].base.tokenizer
    precision = items[rows[0]][0].precision
    # Similar lengths together: less padding in each mixed batch.
    encoded = {i: tokenizer(items[i][1], truncation=True, max_length=items[i][0].config.max_length)
               for i in rows}
    order = sorted(rows, key=lambda i: len(encoded[i]["input_ids"]))
    unique = {p.slot: p for p in (items[i][0] for i in rows)}
    with host.lock:
        entries = [(host, p.slot, p.loader) for p in unique.values() if p.loader is not None]
        if entries:
            ensure_loaded(entries)
        host.eval()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            batch = tokenizer.pad([encoded[i] for i in chunk], return_tensors="pt")
            with autocast(precision):
                logits = mixed_logits(host, [items[i][0].slot for i in chunk], lora_impl=lora_impl, **batch)
            for i, row in zip(chunk, logits):
                probs = torch.softmax(row.float(), dim=-1)
                best = int(probs.argmax())
                results[i] = Prediction(items[i][0].labels[best], float(probs[best]))
