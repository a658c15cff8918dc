"""Many tasks in one call: `AdapterRegistry.predict_many([(task_ref, text), ...])`.

Each distinct reference is loaded once (`AdapterRegistry.load`), then the rows of every adapter on the
same base model share forward passes (`modeling.predictor.predict_mixed`: per-row batched LoRA for
`lora` versions, one sub-batch per adapter for other kinds).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from modeling.predictor import Prediction, Predictor, predict_mixed
from tasks.errors import ContinualError

if TYPE_CHECKING:
    from registry.registry import AdapterRegistry


def predict_many(registry: "AdapterRegistry", items: Sequence[tuple[str, str]], batch_size: int = 32,
                 precision: str = "auto") -> list[Prediction]:
    """One `Prediction` per (task reference, text), in input order."""
    items = list(items)
    for n, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise ContinualError(f"predict_many item {n} is {item!r}; give (task_ref, text) pairs of strings, "
                                 f"e.g. ('agnews@production', 'Oil prices jump')")
    if batch_size < 1:
        raise ContinualError(f"batch_size={batch_size} must be >= 1")
    predictors: dict[str, Predictor] = {}
    for ref, _ in items:
        if ref not in predictors:
            predictors[ref] = registry.load(ref, precision=precision)
    # Encoder adapters share forward passes; any other predictor (a classifier on a causal LM) answers its
    # own rows in one call per reference.
    out: list = [None] * len(items)
    mixed = [n for n, (ref, _) in enumerate(items) if type(predictors[ref]) is Predictor]
    for n, answer in zip(mixed, predict_mixed([(predictors[items[n][0]], items[n][1]) for n in mixed],
                                              batch_size=batch_size)):
        out[n] = answer
    for ref in {ref for n, (ref, _) in enumerate(items) if out[n] is None and n not in set(mixed)}:
        rows = [n for n, (r, _) in enumerate(items) if r == ref]
        for n, answer in zip(rows, predictors[ref].predict([items[n][1] for n in rows], batch_size=batch_size)):
            out[n] = answer
    return out
