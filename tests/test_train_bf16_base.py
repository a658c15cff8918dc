"""Training in bf16 holds the frozen base Linear layers in bf16: same numbers as autocast, restored after."""
from __future__ import annotations

import pytest
import torch

from continual.trainer import frozen_linears_in_bf16
from modeling.kinds import get_kind
from tiny import tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def lora_model():
    model = tiny_model()
    model.add_slot("t", "lora", get_kind("lora").make_config({"lora_dropout": 0.0}), ("a", "b"))
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    for p in model.trainable_parameters("t"):
        p.requires_grad_(True)
        with torch.no_grad():
            p.normal_(0, 0.2)
    return model.eval()


def step(model):
    ids = torch.randint(1, 100, (3, 7))
    mask = torch.ones_like(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model("t", ids, mask)
    logits.float().sum().backward()
    grads = [p.grad.clone() for p in model.trainable_parameters("t")]
    model.zero_grad()
    return logits.detach(), grads


def test_same_logits_and_gradients_as_autocast_and_weights_restored():
    model = lora_model()
    before = {n: (p, p.detach().clone()) for n, p in model.encoder.named_parameters()}
    torch.manual_seed(0)
    expected, expected_grads = step(model)
    with frozen_linears_in_bf16(model, "bf16"):
        dtypes = {n: p.dtype for n, p in model.encoder.named_parameters()}
        torch.manual_seed(0)
        got, grads = step(model)
    assert dtypes["encoder.layer.0.attention.output.dense.weight"] == torch.bfloat16
    assert dtypes["encoder.layer.0.attention.self.query.base_layer.weight"] == torch.bfloat16
    assert dtypes["encoder.layer.0.attention.self.query.lora_A.t.weight"] == torch.float32  # trains: stays fp32
    assert dtypes["embeddings.word_embeddings.weight"] == torch.float32  # not a Linear
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for g, e in zip(grads, expected_grads):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)
    for n, p in model.encoder.named_parameters():  # the very same fp32 parameters, unchanged
        assert p is before[n][0] and p.dtype == torch.float32 and torch.equal(p, before[n][1])


@pytest.mark.parametrize("precision, enabled", [("32", True), ("bf16", False)])
def test_other_precisions_and_unfreezing_leave_the_model_alone(precision, enabled):
    model = lora_model()
    with frozen_linears_in_bf16(model, precision, enabled=enabled):
        assert all(p.dtype == torch.float32 for p in model.parameters())
