"""Every adapter kind trains through `train_task`, registers a version and loads back by name
with the same predictions (tiny random base model)."""
import pytest
import torch

from continual.config import TrainConfig
from continual.evaluate import predict_ids
from continual.train import train_task
from modeling.kinds import KINDS

FAST = dict(max_steps=2, batch_size=8, max_length=32, eval_batch_size=32, learning_rate=1e-2)
TEXTS = ["the match went to extra time", "shares rose after the earnings call", "rain is expected tomorrow"]


@pytest.fixture(scope="module")
def reg(new_registry):
    return new_registry("kinds-store", demo_sizes={"train": 24, "dev": 8, "test": 8})


def predictions_match(reg, result, ref):
    from tasks.loaders import Example

    examples = [Example(t, result.model.slots[result.slot].labels[0]) for t in TEXTS]
    tokenizer = reg.load(ref).base.tokenizer
    trained = predict_ids(result.model, result.slot, tokenizer, examples, max_length=32)
    loaded = reg.load(ref, precision="32").predict_proba(TEXTS)
    # Identical weights: the loaded adapter answers as the trained one did.
    logits_model = result.model
    with torch.no_grad():
        enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
        expected = torch.softmax(logits_model(result.slot, **enc), -1)
    torch.testing.assert_close(torch.tensor(loaded), expected, atol=1e-5, rtol=1e-4)
    assert list(loaded.argmax(1)) == trained


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_trains_registers_and_loads(reg, tiny_base_dir, kind):
    result = train_task(reg, "demo-topic", TrainConfig(**FAST), method=kind, base_model=str(tiny_base_dir))
    assert result.version.kind == kind
    predictions_match(reg, result, result.version.ref)


def test_shared_b_versions_are_registered_and_recorded(reg, tiny_base_dir):
    cfg = TrainConfig(**FAST, kind_options={"share_group": "grp", "train_shared": True})
    first = train_task(reg, "demo-sentiment", cfg, method="shared-b-lora", base_model=str(tiny_base_dir))
    second = train_task(reg, "demo-intent", cfg, method="shared-b-lora", base_model=str(tiny_base_dir),
                        model=first.model)
    assert first.version.tags["shared_part"] == "shared-b-lora--grp:1"
    assert second.version.tags["shared_part"] == "shared-b-lora--grp:2"
    assert reg.shared_versions("shared-b-lora--grp") == [1, 2]
    # By default a task loads the B it was trained with; "current" takes the newest B.
    recorded = reg.load(first.version.ref)
    current = reg.load(first.version.ref, shared="current")
    assert recorded.slot != current.slot
    assert not torch.allclose(torch.tensor(recorded.predict_proba(TEXTS)), torch.tensor(current.predict_proba(TEXTS)))
    predictions_match(reg, second, second.version.ref)


def test_unfrozen_base_layers_are_saved_and_recorded(reg, tiny_base_dir):
    cfg = TrainConfig(**FAST, unfreeze_schedule="every=1,unit=step,group=1")
    result = train_task(reg, "demo-topic", cfg, base_model=str(tiny_base_dir))
    tags = result.version.tags
    assert tags["base_modified"] == "true" and tags["unfreeze_schedule"] == "every=1,unit=step,group=1"
    assert "base_layers.safetensors" in result.version.checksums
    predictor = reg.load(result.version.ref)
    assert predictor.host.encoder is not predictor.base.encoder  # the shared base stays untouched
    predictions_match(reg, result, result.version.ref)
