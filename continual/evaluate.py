"""Accuracy of a slot of an `AdapterModel` on examples (plain torch; used after and between trainings)."""
from __future__ import annotations

from typing import Sequence

import torch

from continual.data import EncodedDataset, make_loader
from modeling.hardware import autocast
from modeling.model import AdapterModel
from tasks.loaders import Example


@torch.no_grad()
def predict_ids(model: AdapterModel, slot: str, tokenizer, examples: Sequence[Example], max_length: int = 128,
                batch_size: int = 64, precision: str = "auto", progress=None) -> list[int]:
    labels = model.slots[slot].labels
    # Unknown labels can't be scored; evaluation data was validated against the label set already.
    dataset = EncodedDataset(examples, tokenizer, labels, max_length)
    was_training = model.training
    model.eval()
    out: list[int] = []
    device = next(model.parameters()).device
    try:
        for batch in make_loader(dataset, tokenizer, batch_size, shuffle=False):
            batch.pop("labels")
            batch = {k: v.to(device) for k, v in batch.items()}
            with autocast(precision, device.type):
                logits = model(slot, **batch)
            out += logits.argmax(-1).tolist()
            if progress is not None:
                progress(len(logits))
    finally:
        model.train(was_training)
    return out


def accuracy(model: AdapterModel, slot: str, tokenizer, examples: Sequence[Example], **kwargs) -> float:
    """Fraction of `examples` whose predicted label equals the gold label (on a causal LM: exact match of the
    generation, or the best-scoring label; `continual.lm_training.lm_accuracy`)."""
    if not examples:
        return float("nan")
    if getattr(model, "is_causal_lm", False):
        from continual.lm_training import lm_accuracy

        kwargs.pop("progress", None)
        return lm_accuracy(model, slot, examples, **kwargs)
    labels = model.slots[slot].labels
    predicted = predict_ids(model, slot, tokenizer, examples, **kwargs)
    return sum(labels[p] == e.label for p, e in zip(predicted, examples)) / len(examples)
