"""Sentence and task profiles from the frozen base encoder, and the routing rule, as pure functions.

No FAISS and no MLflow here: these functions take a model and tokenizer (or vectors) and
return numpy arrays, so they are tested on their own and reused by the router
(:mod:`retrieval.routing`), the registry and the benchmarks.

What was measured (``bench/routing.py`` full run: 12 tasks of ``cl_benchmark``, 512 training
inputs per task, every test input, MiniLM-L6) and therefore chosen:

* **Input vectors** are attention-masked mean pools of an *intermediate* layer (layer 4 of 6,
  :func:`default_routing_layer`), L2-normalised. Middle layers keep more of an input's
  surface form (its template, register, length) than the last layer, which is tuned for
  meaning and e.g. confuses dbpedia with amazon.
* **Routing rule**: whiten with the covariance of all registered tasks' samples
  (:func:`fit_whitening`; a shared-covariance Gaussian, LDA-like rule), then cosine to each
  task's whitened mean (:func:`routing_vectors`, :func:`route_scores`): 97.2% routing
  accuracy (mean over tasks). On the same vectors: nearest centroid of last-layer sentence embeddings
  84.4%, of layer 4 87.8%; kNN vote (k=25, centred) over instance vectors 84.1% (last layer)
  and 92.3% (layer 4); whitened last layer 93.0%; several k-means centroids per task lost 1-5
  points against one; a logistic-regression probe on the last layer reached 90-93%.
* **Task profile** (related tasks): the task's whitened mean, concatenated with the centred
  mean of its label-name embeddings at weight 0.5 (:func:`task_profiles`); the label names
  make all members of a task family (sentiment, NLI, QA, topic) each other's nearest.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from modeling.hardware import autocast

__all__ = [
    "Whitening",
    "default_routing_layer",
    "encode_layers",
    "encode_texts",
    "fit_whitening",
    "label_embedding",
    "moments",
    "normalize",
    "route_scores",
    "routing_vectors",
    "sample_texts",
    "task_profiles",
]

EncodeFn = Callable[[Sequence[str]], np.ndarray]


def normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """L2-normalise along ``axis`` (zero vectors stay zero), as float32."""
    x = np.asarray(x, dtype=np.float32)
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


# ---- encoding ------------------------------------------------------------------------------
def default_routing_layer(num_hidden_layers: int) -> int:
    """Layer used for routing vectors: two thirds of the way up (4 for a 6-layer MiniLM).

    Measured on MiniLM-L6 (whitened nearest centroid, 200 inputs per task): layers 0..6 gave
    92/94/95/96.5/96.8/96.0/90.9% routing accuracy; other depths are an extrapolation.
    """
    return max(1, round(2 * num_hidden_layers / 3))


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # hidden (B, T, d), mask (B, T) -> (B, d); padding tokens do not count
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


def encode_layers(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    layers: Sequence[int] = (-1,),
    batch_size: int = 32,
    max_length: int = 128,
    precision: str = "auto",
) -> np.ndarray:
    """Mean-pooled, L2-normalised sentence vectors of several encoder layers in one pass.

    ``layers`` index ``hidden_states`` (0 = token embeddings, ``-1`` = last layer, which is the
    usual sentence embedding). Returns float32 of shape ``(n, len(layers), d)``, in the order of
    ``texts``. Texts are batched by length (less padding). ``precision`` follows
    :func:`modeling.hardware.resolve_precision`: ``auto`` autocasts to bf16 only where the hardware
    does bf16 natively (~3x faster there, cosine >= 0.9999 to float32 vectors) and stays in fp32 where
    bf16 would be emulated (~100x slower).
    """
    texts = [str(t) for t in texts]
    device = next(model.parameters()).device
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: np.ndarray | None = None
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                idx = order[start : start + batch_size]
                batch = tokenizer(
                    [texts[i] for i in idx],
                    padding=True,
                    truncation=True,
                    max_length=max_length,
                    return_tensors="pt",
                ).to(device)
                with autocast(precision, device.type):
                    hidden = model(**batch, output_hidden_states=True).hidden_states
                # (B, L, d)
                pooled = torch.stack(
                    [_mean_pool(hidden[layer].float(), batch["attention_mask"]) for layer in layers], 1
                )
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
                if out is None:
                    out = np.zeros((len(texts), len(layers), pooled.shape[-1]), dtype=np.float32)
                out[idx] = pooled.cpu().numpy()
    finally:
        model.train(was_training)
    if out is None:  # no texts
        d = int(getattr(model.config, "hidden_size", 0))
        out = np.zeros((0, len(layers), d), dtype=np.float32)
    return out


def encode_texts(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    layer: int = -1,
    batch_size: int = 32,
    max_length: int = 128,
    precision: str = "auto",
) -> np.ndarray:
    """Sentence vectors ``(n, d)`` float32: masked mean pool of ``layer``, L2-normalised.

    ``layer=-1`` is the standard sentence embedding; routing uses
    ``default_routing_layer(model.config.num_hidden_layers)``.
    """
    return encode_layers(model, tokenizer, texts, (layer,), batch_size, max_length, precision)[:, 0]


def sample_texts(texts: Sequence[str], n: int, seed: int = 0) -> list[str]:
    """A fixed sample of up to ``n`` texts (same texts and order for the same input and seed)."""
    texts = list(texts)
    if len(texts) <= n:
        return texts
    idx = sorted(random.Random(seed).sample(range(len(texts)), n))
    return [texts[i] for i in idx]


def label_embedding(encode: EncodeFn, labels: Sequence[str]) -> np.ndarray:
    """Normalised mean of the label names' sentence embeddings, ``(d,)``.

    ``encode`` maps texts to ``(n, d)`` sentence vectors, e.g.
    ``lambda t: encode_texts(model, tokenizer, t)`` (last layer: label names are about meaning).
    """
    if not labels:
        raise ValueError("label_embedding needs at least one label name; got none.")
    return normalize(normalize(encode(list(labels))).mean(0))


# ---- whitening and the routing rule -----------------------------------------------------------
def moments(vectors: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Sufficient statistics of a sample: ``(count, sum (d,), sum of outer products (d, d))``, float64.

    They add up across tasks, so the library's whitening never needs the samples again.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise ValueError(f"expected a non-empty (n, d) sample, got shape {x.shape}.")
    return x.shape[0], x.sum(0), x.T @ x


@dataclass
class Whitening:
    """``x -> normalize((x - mean) @ transform)``: centring plus (shrunk) PCA whitening."""

    mean: np.ndarray  # (d,)
    transform: np.ndarray  # (d, d)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        return normalize((x - self.mean.astype(np.float32)) @ self.transform.astype(np.float32))


def fit_whitening(count: int, total: np.ndarray, moment: np.ndarray, eps: float = 1e-2) -> Whitening:
    """Whitening from pooled :func:`moments` of all tasks' samples.

    ``eps`` shrinks the spectrum (adds ``eps * mean eigenvalue``) so that directions with almost
    no variance (fewer samples than dimensions, a single task) are not blown up. Measured: eps
    between 1e-3 and 3e-2 route equally well; 0.3 loses ~0.5 points.
    """
    if count < 2:
        raise ValueError(f"whitening needs at least 2 sample vectors, got {count}.")
    mean = total / count
    cov = moment / count - np.outer(mean, mean)  # (d, d)
    evals, evecs = np.linalg.eigh((cov + cov.T) / 2)
    evals = np.clip(evals, 0.0, None)
    transform = evecs / np.sqrt(evals + eps * max(evals.mean(), 1e-12))
    return Whitening(mean=mean.astype(np.float32), transform=transform.astype(np.float32))


def routing_vectors(task_means: np.ndarray, whitening: Whitening) -> np.ndarray:
    """One routing vector per task ``(t, d)``: its whitened, normalised sample mean."""
    return whitening(np.atleast_2d(task_means))


def route_scores(query_vectors: np.ndarray, whitening: Whitening, task_vectors: np.ndarray) -> np.ndarray:
    """Cosine of each whitened query to each task's routing vector: ``(m, t)``; argmax routes.

    The exact, FAISS-free form of what :class:`retrieval.routing.TaskRouter` searches.
    """
    return whitening(np.atleast_2d(query_vectors)) @ np.atleast_2d(task_vectors).T


def task_profiles(
    routing: np.ndarray,
    labels: np.ndarray | None = None,
    label_mean: np.ndarray | None = None,
    label_weight: float = 0.5,
) -> np.ndarray:
    """Task profiles for "related tasks" ``(t, 2d)``.

    ``routing`` (t, d) are :func:`routing_vectors`; ``labels`` (t, d) are
    :func:`label_embedding` vectors, an all-zero row for a task without label names.
    Label vectors are centred on ``label_mean`` (default: the mean over the rows that have
    labels, when there are at least 2; every label set shares the "this is a label name"
    direction), re-normalised and weighted by ``label_weight``. Pass the library's
    ``label_mean`` when embedding a candidate task that is not registered yet.

    Measured leave-one-out on cl_benchmark: the same-family task (sentiment, NLI, QA, topic)
    ranked first for 9/9 tasks with or without labels; all family members ranked before any
    other task for 100% of them with labels vs 83% without.
    """
    routing = np.atleast_2d(np.asarray(routing, dtype=np.float32))
    t, d = routing.shape
    lab = np.zeros((t, d), np.float32) if labels is None else np.atleast_2d(np.asarray(labels, np.float32))
    if lab.shape != (t, d):
        raise ValueError(f"labels have shape {lab.shape}, expected {(t, d)} (one row per task).")
    has = np.linalg.norm(lab, axis=1) > 0
    if label_mean is None:
        label_mean = lab[has].mean(0) if has.sum() >= 2 else np.zeros(d, np.float32)
    lab = np.where(has[:, None], normalize(lab - np.asarray(label_mean, np.float32)), 0.0)
    return normalize(np.concatenate([routing, label_weight * lab], axis=1))
