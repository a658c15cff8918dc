"""Registry behaviour on a tiny random base model: versions, aliases, loading, integrity checks."""
import json
from pathlib import Path

import pytest
import torch

from continual.config import TrainConfig
from continual.train import train_task
from registry import AdapterRegistry, RegistryError
from modeling.manifest import ArtifactError
from modeling.base_model import load_base_model
from modeling.predictor import Prediction

FAST = TrainConfig(max_steps=3, batch_size=8, max_length=32, eval_batch_size=32)


@pytest.fixture
def trained(store_path, demo_specs, tiny_base_dir):
    """A store with two demo tasks, topic trained twice and sentiment once."""
    reg = AdapterRegistry(store_path)
    topic, sentiment = demo_specs[0], demo_specs[1]
    reg.register_task(topic)
    reg.register_task(sentiment)
    for name in (topic.name, topic.name, sentiment.name):
        train_task(reg, name, FAST, base_model=str(tiny_base_dir))
    return reg, topic.name, sentiment.name


def test_versions_and_refs(trained):
    reg, topic, _ = trained
    versions = reg.versions(topic)
    assert [v.version for v in versions] == [1, 2]
    v = versions[-1]
    assert v.kind == "lora" and v.tags["base_model_fingerprint"] == load_base_model(
        v.tags["base_model_id"]).fingerprint
    assert set(v.checksums) == {"adapter_model.safetensors", "adapter_config.json", "labels.json", "MLmodel"}
    assert 0.0 <= v.metrics["test_accuracy"] <= 1.0
    assert reg.resolve(topic).version == 2
    assert reg.resolve(f"{topic}:1").version == 1


def test_alias_set_move_delete(trained):
    reg, topic, _ = trained
    reg.set_alias(topic, "production", 1)
    assert reg.resolve(f"{topic}@production").version == 1
    reg.set_alias(topic, "production", 2)  # move
    assert reg.resolve(f"{topic}@production").version == 2
    assert reg.versions(topic)[1].aliases == ["production"]
    reg.delete_alias(topic, "production")
    with pytest.raises(RegistryError, match="has no alias 'production'"):
        reg.resolve(f"{topic}@production")


@pytest.mark.parametrize("ref, message", [
    ("nope", "no task named 'nope'"),
    ("{topic}:9", "has no version 9 \\(versions: 1, 2\\)"),
    ("{topic}:x", "bad version 'x'"),
    ("{topic}@", "empty alias"),
    ("{topic}@prod", "has no alias 'prod'"),
])
def test_bad_refs(trained, ref, message):
    reg, topic, _ = trained
    with pytest.raises(RegistryError, match=message):
        reg.resolve(ref.format(topic=topic))


def test_bad_alias_names(trained):
    reg, topic, _ = trained
    for alias in ("latest", "12", "a b"):
        with pytest.raises(RegistryError, match=f"alias '{alias}' is not allowed"):
            reg.set_alias(topic, alias, 1)


def test_two_tasks_share_one_base_model_object(trained):
    reg, topic, sentiment = trained
    a, b = reg.load(topic), reg.load(sentiment)
    assert a.base is b.base
    assert a.host is b.host
    assert a.host.encoder is b.host.encoder is a.base.encoder
    preds = a.predict(["a sentence", "another"]) + b.predict("one more")
    assert all(isinstance(p, Prediction) for p in preds) and len(preds) == 3
    assert {p.label for p in preds[:2]} <= set(a.labels)
    assert preds[2].label in b.labels


def test_loading_versions_side_by_side_keeps_each_its_weights(trained):
    reg, topic, _ = trained
    v1, v2 = reg.load(f"{topic}:1"), reg.load(f"{topic}:2")
    texts = ["the match went to extra time", "shares rose after the earnings call"]
    p1, p2 = v1.predict_proba(texts), v2.predict_proba(texts)
    assert v1.slot != v2.slot
    # Loading v2 must not change what v1 answers.
    torch.testing.assert_close(torch.tensor(v1.predict_proba(texts)), torch.tensor(p1))
    assert p1.shape == p2.shape == (2, len(v1.labels))


def test_tampered_weights_are_refused(trained):
    reg, _, sentiment = trained
    v = reg.resolve(sentiment)
    path = Path(reg.local_adapter_dir(v)) / "adapter_model.safetensors"
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(ArtifactError, match="has sha256 .* but the registry recorded"):
        reg.load(sentiment)


def test_adapter_for_another_base_is_refused(trained):
    reg, topic, _ = trained
    v = reg.resolve(topic)
    config_path = Path(reg.local_adapter_dir(v)) / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model"]["fingerprint"] = "0" * 64
    config_path.write_text(json.dumps(config))
    from modeling.manifest import ArtifactError, sha256_file

    with pytest.raises(ArtifactError, match="'adapter_config.json' has sha256"):  # an edited config is refused
        reg.load(f"{topic}:{v.version}")
    # A consistent version (config, its sha256 and tags agree) for another base: refused by the fingerprint.
    reg.store.set_version_tag(topic, v.version, "sha256.adapter_config.json", sha256_file(config_path))
    reg.store.set_version_tag(topic, v.version, "base_model_fingerprint", "0" * 64)
    with pytest.raises(RegistryError, match="was trained on base model .* fingerprint 000000000000"):
        reg.load(f"{topic}:{v.version}")


def test_task_without_versions(store_path, demo_specs):
    reg = AdapterRegistry(store_path)
    reg.register_task(demo_specs[2])
    with pytest.raises(RegistryError, match="has no adapter version yet; train one"):
        reg.load(demo_specs[2].name)


def test_loading_from_a_local_store_leaves_no_temporary_folders(trained, tmp_path, monkeypatch):
    """Every load used to create an empty temporary folder that was never removed (thousands per test run)."""
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    reg, topic, sentiment = trained
    for ref in (topic, f"{topic}:1", sentiment):
        reg.load(ref).predict(["a text"])
    assert list(scratch.iterdir()) == []
