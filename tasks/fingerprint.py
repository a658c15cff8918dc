"""A content fingerprint of a task's data.

The registry tags every adapter version with the fingerprint of the data it was trained on, so
the fingerprint must depend on the examples only, never on how they were stored: the same rows
as JSONL, CSV, parquet or a ``datasets`` folder hash the same, and any changed text or label
hashes differently. Example order counts (it is part of what a seeded run sees).
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from typing import TYPE_CHECKING, Mapping, Sequence

if TYPE_CHECKING:  # only for the annotation: loaders imports this module
    from tasks.loaders import Example

__all__ = ["data_fingerprint"]

# Bumped if the normalisation below ever changes, so old and new fingerprints never collide.
_SCHEME = "continual-adapters/data-fingerprint/v1"
_SPLIT_ORDER = ("train", "dev", "test")


def _norm(value: str | None) -> str | None:
    # NFC so that "é" typed as one or two code points is the same text; strip because trailing
    # spaces and newlines are artefacts of the file format, not content.
    return None if value is None else unicodedata.normalize("NFC", value).strip()


def data_fingerprint(splits: Mapping[str, Sequence[Example]]) -> str:
    """sha256 hex of the normalised examples of every given split, in train/dev/test order.

    Splits not named train/dev/test follow in sorted order; an absent split and an empty one
    differ (the split header is hashed).
    """
    order = [s for s in _SPLIT_ORDER if s in splits] + sorted(set(splits) - set(_SPLIT_ORDER))
    digest = hashlib.sha256(_SCHEME.encode())
    for split in order:
        examples = splits[split]
        digest.update(f"\n#split {split} {len(examples)}\n".encode())
        for ex in examples:
            # Canonical JSON: sorted keys, no whitespace, one line per example (json escapes
            # newlines inside strings, so lines cannot run into each other).
            row = {"label": _norm(ex.label), "text": _norm(ex.text), "text_pair": _norm(ex.text_pair)}
            line = json.dumps(row, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
            digest.update(line.encode("utf-8") + b"\n")
    return digest.hexdigest()
