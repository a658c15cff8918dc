"""Inference with an adapter trained on a causal LM: `AdapterRegistry.load(task)` returns an `LMPredictor`.

A generation task's `predict(prompts)` returns one `Generation(text, score)` per prompt (greedy;
`max_new_tokens`, `stop` strings and `batch_size` as arguments).  A classification task trained on a
causal LM returns `Prediction(label, score)`, the label with the highest log-probability after the
instruction (score: its softmax over the label set), so it never answers outside the label set.
Never imports Lightning or training code.
"""
from __future__ import annotations

import threading
from typing import Sequence

import torch

from modeling.base_model import BaseModel
from modeling.generation import CausalAdapterModel, Generation, GenerationError, LMFormat, generate, label_logprobs
from modeling.hardware import autocast, resolve_precision
from modeling.manifest import AdapterManifest
from modeling.predictor import Prediction

_hosts_lock = threading.Lock()
_hosts: dict[str, CausalAdapterModel] = {}  # base fingerprint -> the decoder host of every loaded slot


def lm_host_for(base: BaseModel) -> CausalAdapterModel:
    """The process-wide inference decoder on `base` (created on first use; shares base.encoder)."""
    with _hosts_lock:
        host = _hosts.get(base.fingerprint)
        if host is None:
            host = CausalAdapterModel(base.encoder, base.tokenizer).eval()
            _hosts[base.fingerprint] = host
        return host


def recorded_format(config: AdapterManifest, what: str) -> LMFormat | None:
    """The text layout training used, as the manifest records it (None: the labels' default)."""
    return LMFormat.from_json(config.extra["lm"], what) if "lm" in config.extra else None


class LMPredictor:
    def __init__(self, host: CausalAdapterModel, slot: str, base: BaseModel, config: AdapterManifest,
                 task: str, version: int, precision: str = "auto"):
        self.host, self.slot, self.base, self.config = host, slot, base, config
        self.task, self.version = task, version
        self.labels = list(config.labels)
        self.precision = resolve_precision(precision)
        self.objective = host.formats[slot].objective

    def __repr__(self) -> str:
        return f"LMPredictor({self.task}:{self.version}, kind={self.config.kind}, objective={self.objective})"

    def generate(self, prompts: Sequence[str] | str, max_new_tokens: int = 64, stop: Sequence[str] | str = (),
                 batch_size: int = 8) -> list[Generation]:
        """One greedy `Generation(text, score)` per prompt; `score` = mean token log-probability."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        stop = [stop] if isinstance(stop, str) else list(stop)
        with self.host.lock, torch.no_grad():
            self.host.eval()
            with autocast(self.precision):
                return generate(self.host, self.slot, prompts, max_new_tokens=max_new_tokens, stop=stop,
                                batch_size=batch_size, max_length=self.config.max_length)

    def predict_proba(self, texts: Sequence[str] | str, text_pairs: Sequence[str] | None = None,
                      batch_size: int = 8):
        """Label probabilities (N, num_labels) of a classification task: softmax of the label log-probabilities."""
        if self.objective != "classification":
            raise GenerationError(f"task '{self.task}' is a generation task: use predict() or generate()")
        texts = [texts] if isinstance(texts, str) else list(texts)
        if any(not t.strip() for t in texts):
            raise GenerationError("a text is empty; give each text some words")
        pairs = list(text_pairs) if text_pairs is not None else [None] * len(texts)
        with self.host.lock, torch.no_grad():
            self.host.eval()
            with autocast(self.precision):
                scores = label_logprobs(self.host, self.slot, texts, pairs, max_length=self.config.max_length,
                                        batch_size=batch_size)
        return torch.softmax(scores, dim=-1).numpy()

    def predict(self, texts: Sequence[str] | str, text_pairs: Sequence[str] | None = None, batch_size: int = 8,
                max_new_tokens: int = 64, stop: Sequence[str] | str = ()) -> list[Generation] | list[Prediction]:
        """Generation tasks: one `Generation(text, score)` per prompt; classification: `Prediction(label, score)`."""
        if self.objective == "generation":
            return self.generate(texts, max_new_tokens=max_new_tokens, stop=stop, batch_size=batch_size)
        probs = self.predict_proba(texts, text_pairs, batch_size)
        return [Prediction(self.labels[int(p.argmax())], float(p.max())) for p in probs]

    __call__ = predict
