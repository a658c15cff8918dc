"""`continual adapters export REF DIR --format peft`: a genuine peft folder that plain peft loads."""
from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from continual.cli import app
from modeling.export import HEAD_FILE, MANIFEST_FILE
from modeling.model import mean_pool
from test_predict_many import register_random_adapters

pytestmark = pytest.mark.usefixtures("one_thread")
runner = CliRunner()


@pytest.fixture(scope="module")
def store(new_registry, tiny_base_dir, tmp_path_factory):
    reg = new_registry("export")
    register_random_adapters(reg, tiny_base_dir, ["news", "bottle"], ["lora", "adapter"],
                             tmp_path_factory.mktemp("export-data"))
    return reg


def export(store, *args):
    return runner.invoke(app, ["adapters", "export", *args, "--store", str(store.local_root)])


def test_peft_export_loads_in_plain_peft_with_the_same_outputs(store, tiny_base_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModel

    out = tmp_path / "news-peft"
    result = export(store, "news:1", str(out), "--format", "peft")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["adapter_config.json", "adapter_model.safetensors", MANIFEST_FILE, HEAD_FILE, "README.md"])
    peft_config = json.loads((out / "adapter_config.json").read_text())
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert peft_config["peft_type"] == "LORA" and peft_config["r"] == manifest["kind_config"]["r"]
    assert manifest["task"] == "news"

    plain = PeftModel.from_pretrained(AutoModel.from_pretrained(tiny_base_dir), out).eval()
    ours = store.load("news:1", precision="32")
    enc = ours.base.tokenizer(["the match ended in a draw", "stocks fell"], padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = plain(**enc).last_hidden_state
        ours.ensure_loaded()
        ours.host.activate(ours.slot)
        got = ours.host.encoder(**enc).last_hidden_state
        torch.testing.assert_close(got, expected)
        # The head file gives the platform's logits on top of plain peft's encoder.
        from safetensors.torch import load_file

        head = load_file(str(out / HEAD_FILE))
        logits = mean_pool(expected, enc["attention_mask"]) @ head["weight"].T + head["bias"]
        torch.testing.assert_close(torch.softmax(logits, -1), torch.tensor(ours.predict_proba(
            ["the match ended in a draw", "stocks fell"])), rtol=1e-4, atol=1e-5)
    # Without our hooks peft really changed the encoder (the adapter is not the identity).
    with torch.no_grad(), plain.disable_adapter():
        assert not torch.allclose(plain(**enc).last_hidden_state, expected)


@pytest.mark.parametrize("ref, target, message", [
    ("bottle", "fresh", "'adapter' adapter, which peft's LoRA format cannot express"),
    ("nope", "fresh", "no task named 'nope'"),
    ("news@prod", "fresh", "has no alias 'prod'"),
    ("news", "full", "already exists and is not an empty folder"),
])
def test_export_refusals_are_one_line_and_write_nothing(store, tmp_path, ref, target, message):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    result = export(store, ref, str(tmp_path / target))
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (rich may wrap it)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_unknown_format_is_refused(store, tmp_path):
    result = export(store, "news", str(tmp_path / "x"), "--format", "onnx")
    assert result.exit_code == 1 and "format 'onnx' is not supported; choose one of: peft" in result.output
    assert not (tmp_path / "x").exists()
