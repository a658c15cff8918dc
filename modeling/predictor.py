"""Inference: a loaded adapter version that answers `predict(texts)`.

Never imports Lightning or training code.  All predictors on the same base model share one
`AdapterModel` host (one base encoder object per process); each version is a slot in it.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from modeling.manifest import AdapterManifest
from modeling.base_model import BaseModel
from modeling.hardware import autocast, resolve_precision
from modeling.model import AdapterModel

_hosts_lock = threading.Lock()
_hosts: dict[str, AdapterModel] = {}  # base fingerprint -> host holding every loaded slot


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


class Predictor:
    def __init__(self, host: AdapterModel, slot: str, base: BaseModel, config: AdapterManifest,
                 task: str, version: int, precision: str = "auto"):
        self.host = host
        self.slot = slot
        self.base = base
        self.config = config
        self.task = task
        self.version = version
        self.labels = list(config.labels)
        # "auto": bf16 autocast only where the hardware does bf16 natively (modeling.hardware).
        self.precision = resolve_precision(precision)

    def __repr__(self) -> str:
        return f"Predictor({self.task}:{self.version}, kind={self.config.kind}, labels={self.labels})"

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
