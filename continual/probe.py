"""Linear probes: how good a slot's representation is for a task, with only a new head trained.

Forward transfer as DESIGN defines it (R[j-1][j] − b_j) compares a task's fresh slot before and after
the earlier tasks. For isolated kinds the fresh slot is the same untouched adapter both times, so
FWT is 0 by construction, and where it is not, a random head makes both cells near chance. The
probe asks the question FWT is after: is the representation the new task starts from better for it?
It trains a fresh linear head on pooled features of the frozen model (a fixed number of full-batch
Adam steps on a fixed training sample) and scores it on the task's evaluation examples.

The head is fitted by hand on cached features (a logistic regression in a few lines of torch) rather
than through Lightning: the encoder is frozen, so one encoding pass and a tiny optimisation loop is all
it takes, and it runs in well under a second per task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from continual.data import EncodedDataset, make_loader, subsample
from modeling.hardware import autocast
from modeling.model import AdapterModel
from tasks.loaders import Example


@dataclass(frozen=True)
class ProbeSettings:
    steps: int = 200  # full-batch Adam steps on the cached features
    learning_rate: float = 1e-2
    train_examples: int = 256  # the probe's training sample (the same examples every time)
    seed: int = 0


@torch.no_grad()
def pooled_features(model: AdapterModel, slot: str, tokenizer, examples: Sequence[Example], max_length: int = 128,
                    batch_size: int = 64, precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N, H) float32, label ids (N,)) of `examples` under `slot`'s adapter; the model is left as it was."""
    labels = model.slots[slot].labels
    loader = make_loader(EncodedDataset(examples, tokenizer, labels, max_length), tokenizer, batch_size, shuffle=False)
    was_training = model.training
    model.eval()
    feats, ys = [], []
    try:
        for batch in loader:
            ys.append(batch.pop("labels"))
            with autocast(precision):
                feats.append(model.embed(slot, **batch).float())
    finally:
        model.train(was_training)
    hidden = model.hidden_size
    return (torch.cat(feats) if feats else torch.zeros(0, hidden)), (torch.cat(ys) if ys else torch.zeros(0, dtype=torch.long))


def fit_probe(train_x: torch.Tensor, train_y: torch.Tensor, num_labels: int, settings: ProbeSettings) -> torch.nn.Linear:
    """A linear head trained on fixed features by full-batch Adam (deterministic for a seed)."""
    generator = torch.Generator().manual_seed(settings.seed)
    head = torch.nn.Linear(train_x.shape[1], num_labels)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * 0.01)
        head.bias.zero_()
    # Standardise with the training features' statistics: the probe then needs no per-model LR tuning.
    mean, std = train_x.mean(0), train_x.std(0).clamp(min=1e-6)
    x = (train_x - mean) / std
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.learning_rate)
    with torch.enable_grad():
        for _ in range(settings.steps):
            optimizer.zero_grad()
            F.cross_entropy(head(x), train_y).backward()
            optimizer.step()
    with torch.no_grad():  # fold the standardisation into the head
        head.weight.div_(std)
        head.bias.sub_(head.weight @ mean)
    return head


def probe_accuracy(model: AdapterModel, slot: str, tokenizer, train: Sequence[Example], test: Sequence[Example],
                   settings: ProbeSettings = ProbeSettings(), max_length: int = 128,
                   precision: str = "auto") -> float:
    """Test accuracy of a linear head fitted on `slot`'s frozen features of `train` (a fixed sample)."""
    if not test:
        return float("nan")
    sample = subsample(train, settings.train_examples, settings.seed)
    train_x, train_y = pooled_features(model, slot, tokenizer, sample, max_length, precision=precision)
    test_x, test_y = pooled_features(model, slot, tokenizer, test, max_length, precision=precision)
    head = fit_probe(train_x, train_y, len(model.slots[slot].labels), settings)
    with torch.no_grad():
        return float((head(test_x).argmax(-1) == test_y).float().mean())


def init_head_by_probe(model: AdapterModel, slot: str, tokenizer, train: Sequence[Example], max_length: int = 128,
                       precision: str = "auto", seed: int = 0, max_examples: int = 1024) -> None:
    """LP-FT (Kumar et al., 2022, "Fine-Tuning can Distort Pretrained Features"): start `slot`'s head from a
    linear probe fitted on the slot's frozen features of (up to `max_examples` of) the training examples,
    instead of from random weights.  The fine-tuning that follows then starts from a head that already
    fits, so the first steps' large gradients do not push the adapter (or shared layers) off course."""
    settings = ProbeSettings(train_examples=max_examples, seed=seed)
    sample = subsample(train, max_examples, seed)
    x, y = pooled_features(model, slot, tokenizer, sample, max_length, precision=precision)
    fitted = fit_probe(x, y, len(model.slots[slot].labels), settings)
    head = model.heads[slot]
    with torch.no_grad():
        head.weight.copy_(fitted.weight.to(head.weight.dtype))
        head.bias.copy_(fitted.bias.to(head.bias.dtype))
