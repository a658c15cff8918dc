"""Opt-in, seeded text augmentation of training inputs for small tasks (`--set augment=...`).

Two word-level perturbations (EDA, Wei & Zou 2019, without its synonym lookups, which need WordNet):

    word_dropout=p   drop each word with probability p (at least one word always stays)
    word_swap=p      swap each pair of neighbouring words with probability p

Spec: comma-separated key=value pairs, e.g. `word_dropout=0.1,word_swap=0.05`; "" or "none" is off.

Hand-written: the libraries that do this (nlpaug, textattack) pull in NLTK/WordNet downloads or large
models for what is a dozen lines here, and nothing may download at run time.  Each draw of example i
uses its own `random.Random((seed, i, k))` (k = how many times example i was drawn before), so a
training run sees the same augmented texts every time it is repeated with the same seed, and each
epoch sees a different variant.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

from torch.utils.data import Dataset

from tasks.errors import ContinualError
from tasks.loaders import Example

EXAMPLE = "--set augment=word_dropout=0.1,word_swap=0.05"


class AugmentError(ContinualError):
    pass


@dataclasses.dataclass(frozen=True)
class Augment:
    word_dropout: float = 0.0  # probability of dropping each word
    word_swap: float = 0.0  # probability of swapping each neighbouring pair

    def __post_init__(self) -> None:
        for name in ("word_dropout", "word_swap"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise AugmentError(f"augment {name}={value!r} must be in [0, 1); e.g. {EXAMPLE}")

    def apply(self, text: str, rng: random.Random) -> str:
        """`text` with words dropped and neighbours swapped by `rng` (whitespace normalised to single spaces)."""
        words = text.split()
        if len(words) < 2:
            return text
        if self.word_dropout:
            kept = [w for w in words if rng.random() >= self.word_dropout]
            words = kept or [rng.choice(words)]
        if self.word_swap:
            i = 0
            while i < len(words) - 1:
                if rng.random() < self.word_swap:
                    words[i], words[i + 1] = words[i + 1], words[i]
                    i += 2  # a word moves at most one place
                else:
                    i += 1
        return " ".join(words)


def parse_augment(spec: str | None) -> Augment | None:
    """`word_dropout=0.1,word_swap=0.05` -> Augment; None for "", "none" or "off"."""
    if spec is None or str(spec).strip().lower() in ("", "none", "off"):
        return None
    names = {f.name for f in dataclasses.fields(Augment)}
    values: dict[str, float] = {}
    for part in (p.strip() for p in str(spec).split(",")):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in names:
            raise AugmentError(f"augment={spec!r}: bad part {part!r}; write key=value pairs with keys "
                               f"{', '.join(sorted(names))}, e.g. {EXAMPLE}")
        try:
            values[key] = float(raw)
        except ValueError:
            raise AugmentError(f"augment={spec!r}: {key}={raw.strip()!r} is not a number; e.g. {EXAMPLE}") from None
    return Augment(**values)


class AugmentedDataset(Dataset):
    """Training examples tokenized on the fly, each draw augmented with its own seeded RNG.

    Same items as `continual.data.EncodedDataset` (token ids + `labels`), so `make_loader` batches it.
    """

    def __init__(self, examples: Sequence[Example], tokenizer, labels: Sequence[str], max_length: int,
                 augment: Augment, seed: int):
        index = {label: i for i, label in enumerate(labels)}
        self.examples = list(examples)
        self.labels = [index[e.label] for e in self.examples]
        self.tokenizer, self.max_length, self.augment, self.seed = tokenizer, max_length, augment, seed
        self.draws = [0] * len(self.examples)

    def __len__(self) -> int:
        return len(self.examples)

    def text(self, i: int) -> Example:
        """Example i as its next draw sees it (advances the draw counter)."""
        rng = random.Random(f"{self.seed}/{i}/{self.draws[i]}")  # str seeds are hashed deterministically
        self.draws[i] += 1
        e = self.examples[i]
        pair = self.augment.apply(e.text_pair, rng) if e.text_pair is not None else None
        return Example(self.augment.apply(e.text, rng), e.label, pair)

    def __getitem__(self, i: int) -> dict:
        e = self.text(i)
        enc = self.tokenizer(e.text, e.text_pair, truncation=True, max_length=self.max_length)
        return {**{k: enc[k] for k in enc.keys()}, "labels": self.labels[i]}
