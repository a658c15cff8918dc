"""Safe loading (every file verified before use, safetensors only, no remote code), `adapters verify
[--repair]`, and experiments that never move what users serve."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from continual.cli import app
from continual.config import TrainConfig
from continual.train import train_task
from modeling.manifest import CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE, ArtifactError, sha256_file
from registry import RegistryError
from registry import tags as T

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = TrainConfig(max_steps=1, batch_size=8, max_length=32, eval_batch_size=64)


@pytest.fixture(scope="module")
def shared_reg(new_registry):
    return new_registry("loading", demo_sizes={"train": 32, "dev": 8, "test": 8})


@pytest.fixture
def trained(shared_reg, tiny_base_dir):
    """A fresh version of demo-topic in the module's store (each test damages its own)."""
    result = train_task(shared_reg, "demo-topic", FAST, base_model=str(tiny_base_dir))
    return shared_reg, result.version, shared_reg.local_adapter_dir(result.version)


@pytest.fixture
def fresh(new_registry, tiny_base_dir):
    """A store of its own, with demo-topic:1."""
    reg = new_registry("loading-fresh", demo_sizes={"train": 32, "dev": 8, "test": 8})
    result = train_task(reg, "demo-topic", FAST, base_model=str(tiny_base_dir))
    return reg, result.version, reg.local_adapter_dir(result.version)


def test_every_file_of_a_version_is_hashed(trained):
    reg, version, folder = trained
    assert set(version.checksums) == {WEIGHTS_FILE, CONFIG_FILE, LABELS_FILE, "MLmodel"}  # MLmodel: the pyfunc flavour
    assert all(sha256_file(folder / name) == sha for name, sha in version.checksums.items())


def test_reordered_labels_are_refused_before_the_base_model_is_touched(trained, monkeypatch):
    reg, version, folder = trained
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["labels"] = list(reversed(config["labels"]))  # confidently wrong answers if it loaded
    config["base_model"]["id"] = "/evil/model"  # and this must never reach from_pretrained
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    import registry.registry as registry_module

    called = []
    monkeypatch.setattr(registry_module, "load_base_model", lambda *a, **k: called.append(a))
    with pytest.raises(ArtifactError, match=f"'{CONFIG_FILE}' has sha256"):
        reg.load(version.ref)
    assert called == []


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_tampered_or_truncated_weights_are_named(trained, damage):
    reg, version, folder = trained
    path = folder / WEIGHTS_FILE
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        path.unlink()
    with pytest.raises(ArtifactError, match=f"'{WEIGHTS_FILE}'"):
        reg.load(version.ref)


def test_an_unhashed_file_in_the_folder_is_refused(trained):
    reg, version, folder = trained
    shutil.copy(folder / WEIGHTS_FILE, folder / "base_layers.safetensors")  # would be loaded into the base
    with pytest.raises(ArtifactError, match="'base_layers.safetensors' is in .* no sha256"):
        reg.load(version.ref)


def test_a_version_without_checksums_does_not_load(trained, tiny_base_dir):
    reg, version, _ = trained
    source = reg.store.client.get_model_version("demo-topic", str(version.version))
    tags = {k: v for k, v in source.tags.items() if not k.startswith(T.SHA_PREFIX)}
    old = reg.store.create_version("demo-topic", source.source, source.run_id, tags)  # an old-style version
    with pytest.raises(ArtifactError, match="recorded no sha256 for adapter_config.json, adapter_model.safetensors"):
        reg.load(f"demo-topic:{old.version}")


def test_weights_are_never_unpickled(trained, tmp_path):
    """Even a pickle whose sha256 the registry recorded (a forged store) is refused, and never runs."""
    reg, version, folder = trained
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "ran"))

    (folder / WEIGHTS_FILE).write_bytes(pickle.dumps(Payload()))
    reg.store.set_version_tag("demo-topic", version.version, f"{T.SHA_PREFIX}{WEIGHTS_FILE}",
                              sha256_file(folder / WEIGHTS_FILE))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        reg.load(version.ref)
    assert not marker.exists()


def test_a_failed_load_leaves_no_slot_behind_and_a_retry_serves_the_real_weights(trained):
    """A load that fails after its slot was added (here a forged, unreadable weights file whose sha256 was
    recorded) must not leave that slot in the shared host: a retry would find it and serve random weights."""
    from modeling import predictor as P
    from modeling.manifest import load_safetensors

    reg, version, folder = trained
    path, sha_tag = folder / WEIGHTS_FILE, f"{T.SHA_PREFIX}{WEIGHTS_FILE}"
    good = path.read_bytes()
    path.write_bytes(b"not a safetensors file")
    reg.store.set_version_tag("demo-topic", version.version, sha_tag, sha256_file(path))
    with pytest.raises(ArtifactError, match="not a readable safetensors file"):
        reg.load(version.ref)
    prefix = f"demo-topic__v{version.version}__"
    hosts = list(P._hosts.values()) + list(P._private_hosts.values())
    assert not [s for host in hosts for s in host.slots if s.startswith(prefix)]
    assert not [s for s in P.loaded_slots() if s.startswith(prefix)]

    path.write_bytes(good)  # the file is restored (say, the disk came back): the same ref loads for real
    reg.store.set_version_tag("demo-topic", version.version, sha_tag, sha256_file(path))
    predictor = reg.load(version.ref)
    saved = {k[len("head."):]: v for k, v in load_safetensors(path).items() if k.startswith("head.")}
    for name, tensor in predictor.host.heads[predictor.slot].state_dict().items():
        assert torch.equal(tensor, saved[name]), name


def test_base_model_code_is_not_run_unless_trusted(tmp_path, monkeypatch):
    from modeling.base_model import BaseModelError, load_base_model

    folder = tmp_path / "custom-model"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evil-bert", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                                                "AutoModel": "modeling_evil.EvilModel"}}))
    (folder / "configuration_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    (folder / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.delenv("CONTINUAL_TRUST_REMOTE_CODE", raising=False)
    with pytest.raises(BaseModelError, match="custom-model"):
        load_base_model(str(folder))
    assert not marker.exists()


def test_verify_names_each_problem_and_repair_quarantines(fresh, tiny_base_dir):
    reg, version, folder = fresh
    runner = CliRunner()
    store = ["--store", str(reg.local_root)]
    ok = runner.invoke(app, ["adapters", "verify", *store])
    assert ok.exit_code == 0 and "0 problem(s)" in ok.output, ok.output
    second = train_task(reg, "demo-topic", FAST, base_model=str(tiny_base_dir)).version
    broken = reg.local_adapter_dir(second)
    good = (broken / LABELS_FILE).read_bytes()
    (broken / LABELS_FILE).write_text("{}")
    bad = runner.invoke(app, ["adapters", "verify", *store])
    assert bad.exit_code == 1 and "demo-topic:2: adapter demo-topic:2: 'labels.json' has sha256" in bad.output
    assert reg.resolve("demo-topic").version == 2
    fixed = runner.invoke(app, ["adapters", "verify", "--repair", *store])
    assert fixed.exit_code == 0 and "repaired demo-topic:2" in fixed.output, fixed.output
    assert reg.resolve("demo-topic").version == 1  # newest skips the quarantined version; nothing was deleted
    assert [v.version for v in reg.versions("demo-topic")] == [1, 2]
    still = runner.invoke(app, ["adapters", "verify", *store])
    assert still.exit_code == 1 and "quarantined" in still.output
    (broken / LABELS_FILE).write_bytes(good)  # restored: repair releases it
    released = runner.invoke(app, ["adapters", "verify", "--repair", *store])
    assert released.exit_code == 0 and reg.resolve("demo-topic").version == 2


def test_verify_finds_a_stale_index_and_repair_rebuilds_it(new_registry):
    reg = new_registry("stale-index", demo_sizes={"train": 32, "dev": 8, "test": 8})
    reg.route(["hello"])  # builds the cache
    meta = reg.index.cache_dir / "router.json"
    data = json.loads(meta.read_text())
    data["extra"]["profiles"]["demo-topic"] = "0123/task_profile"  # as if demo-topic had been registered again
    meta.write_text(json.dumps(data))
    report = reg.verify()
    assert [p.where for p in report.problems] == ["task index"] and "demo-topic" in report.problems[0].what
    assert reg.verify(repair=True).ok and reg.verify().problems == []


def test_sequence_versions_never_move_what_users_serve(fresh, tiny_base_dir):
    from continual.sequence import SequenceSpec, run_sequence

    reg, version, _ = fresh
    reg.set_alias("demo-topic", "production", 1)
    run_sequence(reg, SequenceSpec(name="exp", tasks=("demo-sentiment", "demo-topic"), method="lora",
                                   config={"max_steps": 1, "batch_size": 8, "max_length": 32},
                                   base_model=str(tiny_base_dir)))
    versions = reg.versions("demo-topic")
    assert [v.version for v in versions] == [1, 2] and versions[1].experiment == "exp"
    assert reg.resolve("demo-topic").version == 1  # newest a user trained
    assert reg.resolve("demo-topic", include_experiments=True).version == 2
    assert reg.resolve("demo-topic@production").version == 1 and versions[1].aliases == []
    assert reg.load("demo-topic").version == 1
    with pytest.raises(RegistryError, match="no version trained outside an experiment"):
        reg.resolve("demo-sentiment")
    assert reg.resolve("demo-sentiment:1").experiment == "exp"  # by number it is there
