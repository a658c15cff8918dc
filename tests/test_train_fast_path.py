"""The training fast path: the frozen base's own dropout off (adapter and head dropout kept), eager
attention for bf16 on a CPU, and the configured thread count applied by fit_slot itself."""
from __future__ import annotations

import lightning as L
import pytest
import torch
from torch import nn

from continual.config import TrainConfig
from continual.train import build_model, fit_slot
from continual.trainer import base_dropout_off
from modeling.hardware import training_attention
from modeling.kinds import get_kind
from tasks.loaders import Example
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def base_rates(model) -> list[float]:
    return [m.p for n, m in model.encoder.named_modules() if isinstance(m, nn.Dropout) and "lora_dropout" not in n]


def lora_rates(model) -> list[float]:
    return [m.p for n, m in model.encoder.named_modules() if isinstance(m, nn.Dropout) and "lora_dropout" in n]


def lora_model(lora_dropout: float):
    model = tiny_model(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3)
    model.add_slot("t", "lora", get_kind("lora").make_config({"lora_dropout": lora_dropout}), ("a", "b"))
    return model


def test_base_dropout_off_silences_only_the_base_and_restores_it():
    model = lora_model(lora_dropout=0.5)
    assert set(base_rates(model)) == {0.3} and set(lora_rates(model)) == {0.5}
    with base_dropout_off(model):
        assert set(base_rates(model)) == {0.0}
        assert set(lora_rates(model)) == {0.5} and model.head_dropout.p == 0.1  # the adapter's and head's own
    assert set(base_rates(model)) == {0.3} and set(lora_rates(model)) == {0.5}
    with base_dropout_off(model, enabled=False):
        assert set(base_rates(model)) == {0.3}


def test_without_base_dropout_a_training_forward_is_deterministic():
    """Hidden-state and attention-probability dropout are both gone (BERT's attention reads its module's rate)."""
    model = lora_model(lora_dropout=0.0).train()
    model.head_dropout.p = 0.0
    ids, mask = torch.randint(1, 100, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    assert not torch.equal(model("t", ids, mask), model("t", ids, mask))  # base dropout on: two draws differ
    with base_dropout_off(model):
        torch.testing.assert_close(model("t", ids, mask), model("t", ids, mask), rtol=0, atol=0)


def test_training_attention_is_eager_for_bf16_on_a_cpu_only_with_the_same_logits():
    model = tiny_model(attn="sdpa")
    model.add_slot("t", "lora", get_kind("lora").make_config({}), ("a", "b"))
    config = model.encoder.config
    ids, mask = torch.randint(1, 100, (3, 9)), torch.ones(3, 9, dtype=torch.long)
    mask[0, 6:] = 0  # padding: the mask must reach eager attention as it reached SDPA
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model("t", ids, mask)
        with training_attention(model.encoder, "32", "cpu"):
            assert config._attn_implementation == "sdpa"
        with training_attention(model.encoder, "bf16", "cpu"):
            assert config._attn_implementation == "eager"
            got = model("t", ids, mask)
    assert config._attn_implementation == "sdpa"
    torch.testing.assert_close(got.float(), expected.float(), rtol=0.02, atol=0.02)
    eager = tiny_model(attn="eager")
    with training_attention(eager.encoder, "bf16", "cpu"):
        assert eager.encoder.config._attn_implementation == "eager"
    assert eager.encoder.config._attn_implementation == "eager"


class RecordRates(L.Callback):
    def __init__(self, model):
        self.model, self.seen = model, []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.seen.append((tuple(base_rates(self.model)), tuple(lora_rates(self.model)), torch.get_num_threads()))


@pytest.mark.parametrize("base_dropout", [False, True])
def test_fit_slot_trains_without_base_dropout_by_default_on_the_set_threads(tiny_base_dir, base_dropout):
    from modeling.base_model import load_base_model

    base = load_base_model(str(tiny_base_dir))
    model = build_model(base)
    config = TrainConfig(max_epochs=1, batch_size=4, max_length=16, precision="32", num_threads=1,
                         base_dropout=base_dropout)
    model.add_slot("t", "lora", get_kind("lora").make_config(config.flat()), ("a", "b"))
    before = base_rates(model)
    assert before and all(p > 0 for p in before)
    record = RecordRates(model)
    torch.set_num_threads(2)
    try:
        fit_slot(model, "t", base, config, [Example(f"text {i}", "ab"[i % 2]) for i in range(8)], [],
                 callbacks=[record])
    finally:
        torch.set_num_threads(1)
    assert len(record.seen) == 2
    for base_seen, lora_seen, threads in record.seen:
        assert list(base_seen) == (before if base_dropout else [0.0] * len(before))
        assert set(lora_seen) == {config.lora_dropout} and threads == 1
    assert base_rates(model) == before  # put back after training
