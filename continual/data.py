"""Examples -> tokenized batches with dynamic padding (each batch padded to its own longest input)."""
from __future__ import annotations

import random
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from tasks.loaders import Example


class EncodedDataset(Dataset):
    """Tokenized once up front (no padding); labels as class ids."""

    def __init__(self, examples: Sequence[Example], tokenizer, labels: Sequence[str], max_length: int):
        index = {label: i for i, label in enumerate(labels)}
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples]
        has_pairs = any(p is not None for p in pairs)
        enc = tokenizer(texts, [p or "" for p in pairs] if has_pairs else None, truncation=True,
                        max_length=max_length)
        self.features = [{k: enc[k][i] for k in enc.keys()} for i in range(len(examples))]
        self.labels = [index[e.label] for e in examples]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {**self.features[i], "labels": self.labels[i]}


def make_loader(dataset: EncodedDataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    from transformers import DataCollatorWithPadding

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
                      collate_fn=DataCollatorWithPadding(tokenizer, return_tensors="pt"))


def subsample(examples: Sequence[Example], limit: int, seed: int = 0) -> list[Example]:
    """At most `limit` examples (0: all), always the same ones for a seed, in their original order."""
    if not limit or limit >= len(examples):
        return list(examples)
    keep = sorted(random.Random(seed).sample(range(len(examples)), limit))
    return [examples[i] for i in keep]
