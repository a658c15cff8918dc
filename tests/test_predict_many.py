"""Mixed-task batches (`AdapterRegistry.predict_many`) and bounded loaded adapters (LRU eviction)."""
from __future__ import annotations

import json

import pytest
import torch

from modeling import predictor as P
from modeling.base_model import load_base_model
from modeling.kinds import get_kind
from modeling.manifest import AdapterManifest
from modeling.model import AdapterModel
from registry import AdapterRegistry
from registry import tags as T
from tasks.loaders import build_spec

pytestmark = pytest.mark.usefixtures("one_thread")

TEXTS = ["the match ended in a draw", "stocks fell sharply today", "a new phone was released",
         "the senate passed the bill", "what a lovely film", "refund my order please"]


def register_random_adapters(reg: AdapterRegistry, base_dir, names: list[str], kinds: list[str],
                             tmp_path) -> None:
    """Register one task per name with a random (untrained, but non-identity) adapter of its kind, so
    each task answers differently; training is not what these tests are about."""
    base = load_base_model(str(base_dir))
    for n, (name, kind_name) in enumerate(zip(names, kinds)):
        labels = [f"{name}-{c}" for c in "abc"]
        data = tmp_path / f"{name}.jsonl"
        data.write_text("".join(json.dumps({"text": f"text {i}", "label": labels[i % 3]}) + "\n" for i in range(6)))
        reg.register_task(build_spec(name, data), embed=False)
        kind = get_kind(kind_name)
        model = AdapterModel(base.fresh_encoder())
        model.add_slot(name, kind_name, kind.make_config({}), tuple(labels))
        torch.manual_seed(100 + n)
        with torch.no_grad():
            for p in model.trainable_parameters(name):
                p.normal_(0, 0.3)
        manifest = AdapterManifest(task=name, kind=kind_name, kind_config=model.slots[name].config.to_dict(),
                                   labels=labels, base_model_id=base.model_id,
                                   base_model_fingerprint=base.fingerprint, max_length=32)
        with reg.run(f"random-{name}") as run:
            reg.register_adapter(run, model, name, manifest, {T.ADAPTER_KIND: kind_name})


@pytest.fixture(scope="module")
def library(new_registry, tiny_base_dir, tmp_path_factory):
    reg = new_registry("predict-many")
    names = [f"t{i}" for i in range(6)]
    kinds = ["lora"] * 5 + ["adapter"]  # one bottleneck adapter: served by the per-slot fallback
    register_random_adapters(reg, tiny_base_dir, names, kinds, tmp_path_factory.mktemp("pm-data"))
    return reg, names


@pytest.fixture
def bound():
    before = P.max_loaded_adapters()
    yield P.set_max_loaded_adapters
    P.set_max_loaded_adapters(before)


def reference(reg, items):
    """Each row through its own adapter alone (the per-request path)."""
    return [reg.load(ref, precision="32").predict([text])[0] for ref, text in items]


def test_predict_many_matches_single_adapter_answers(library, bound):
    reg, names = library
    bound(32)
    items = [(names[i % len(names)], TEXTS[i % len(TEXTS)]) for i in range(14)]
    expected = reference(reg, items)
    got = reg.predict_many(items, batch_size=5, precision="32")
    assert [p.label for p in got] == [p.label for p in expected]
    torch.testing.assert_close(torch.tensor([p.score for p in got]), torch.tensor([p.score for p in expected]),
                               rtol=1e-4, atol=1e-5)
    assert {p.label.split("-")[0] for p in got} == set(names)  # each row answered by its own task's head


def test_lora_rows_share_one_encoder_forward(library, bound, monkeypatch):
    reg, names = library
    bound(32)
    lora = names[:5]
    for name in lora:
        reg.load(name)
    host = reg.load(lora[0]).host
    calls = []
    handle = host.encoder.register_forward_hook(lambda m, a, kw: calls.append(1))
    try:
        reg.predict_many([(name, "same text") for name in lora], batch_size=32)
    finally:
        handle.remove()
    assert len(calls) == 1


def test_loaded_adapters_stay_bounded_and_answers_stay_right(library, bound):
    reg, names = library
    bound(32)
    items = [(name, text) for name in names for text in TEXTS[:2]]
    expected = reference(reg, items)
    host = reg.load(names[0]).host

    bound(1)
    one_slot_params = sum(p.numel() for p in host.parameters())
    one_slot_modules = len(list(host.modules()))
    bound(2)
    got = reg.predict_many(items, batch_size=4, precision="32")
    assert [p.label for p in got] == [p.label for p in expected]
    assert len(P.loaded_slots()) <= 2 and len(host.slots) <= 2
    from peft.tuners.lora import LoraLayer

    for layer in (m for m in host.encoder.modules() if isinstance(m, LoraLayer)):
        assert len(layer.lora_A) <= 2 and len(layer.lora_B) <= 2
    # Two slots at most: parameters and modules grow by at most one more adapter than with one slot.
    per_adapter = max(sum(p.numel() for p in host.trainable_parameters(s)) for s in host.slots)
    assert sum(p.numel() for p in host.parameters()) <= one_slot_params + per_adapter
    assert len(list(host.modules())) <= one_slot_modules + 40
    # Loading each task again, one after another, never grows the host past the bound either.
    for name in names * 2:
        reg.load(name, precision="32")
        assert len(host.slots) <= 2
    # An evicted predictor reloads its adapter and still answers right.
    first = reg.load(names[0], precision="32")
    for name in names[1:3]:
        reg.load(name)
    assert first.slot not in host.slots
    assert first.predict([items[0][1]])[0] == expected[0]


def test_predict_many_refuses_bad_items(library):
    from tasks.errors import ContinualError

    reg, _ = library
    with pytest.raises(ContinualError, match="give \\(task_ref, text\\) pairs"):
        reg.predict_many(["just a text"])
    with pytest.raises(ContinualError, match="no task named 'nope'"):
        reg.predict_many([("nope", "x")])
