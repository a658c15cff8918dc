"""Generation tasks on tiny random causal LMs (GPT-2 and Llama built from configs, MiniLM tokenizer)."""
from __future__ import annotations

import random

import pytest
import torch

from continual.config import TrainConfig
from lm_tiny import digit_task, save_tiny_lm, write_jsonl
from tasks.loaders import Example, build_spec
from tiny import one_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return save_tiny_lm(tmp_path_factory.mktemp("tiny-llama"), "llama", chat=True)


def fast_config(**changes) -> TrainConfig:
    settings = dict(learning_rate=1e-2, batch_size=16, max_epochs=4, precision="32", r=16, lora_alpha=32,
                    lora_dropout=0.0, eval_batch_size=32)
    settings.update(changes)
    return TrainConfig(**settings)


def digit_examples(op: str, n: int, seed: int) -> list[Example]:
    return [Example(r["prompt"], r["completion"]) for r in digit_task(random.Random(seed), n, op)]


def test_a_tiny_gpt2_learns_a_deterministic_task(gpt2_dir):
    from continual.lm_training import fit_lm_slot, lm_evaluate
    from continual.train import build_model
    from modeling.base_model import load_base_model
    from modeling.kinds import get_kind

    base = load_base_model(str(gpt2_dir))
    assert base.causal_lm
    model = build_model(base)
    # LoRA on every projection: on random weights the attention alone cannot carry the answer.
    config = fast_config(target_modules=["c_attn", "c_proj", "c_fc"], max_epochs=10, learning_rate=2e-2)
    torch.manual_seed(0)
    model.add_slot("next", "lora", get_kind("lora").make_config(config.flat()), ())
    before = lm_evaluate(model, "next", digit_examples("next", 40, 1), precision="32")
    fit_lm_slot(model, "next", config, digit_examples("next", 240, 0), [])
    after = lm_evaluate(model, "next", digit_examples("next", 40, 1), precision="32")
    assert before["accuracy"] < 0.5
    assert after["accuracy"] >= 0.9, after
    assert after["token_accuracy"] >= 0.9 and after["perplexity"] < before["perplexity"]


def test_a_causal_lm_refuses_a_head_lr_scale_it_has_no_head_for(gpt2_dir):
    from continual.lm_training import fit_lm_slot
    from continual.train import TrainError, build_model
    from modeling.base_model import load_base_model
    from modeling.kinds import get_kind

    model = build_model(load_base_model(str(gpt2_dir)))
    config = fast_config(head_lr_scale=0.5)
    model.add_slot("next", "lora", get_kind("lora").make_config(config.flat()), ())
    with pytest.raises(TrainError, match=r"head_lr_scale=0.5 scales classification heads; a causal LM has none"):
        fit_lm_slot(model, "next", config, digit_examples("next", 16, 0), [])


@pytest.fixture(scope="module")
def trained(gpt2_dir, new_registry, tmp_path_factory):
    """A generation task registered and trained (LoRA) on the tiny GPT-2 in a fresh store."""
    from continual.train import train_task

    data = tmp_path_factory.mktemp("gen-data")
    rng = random.Random(0)
    spec = build_spec("next-digit", write_jsonl(data / "train.jsonl", digit_task(rng, 64, "next")),
                      dev=write_jsonl(data / "dev.jsonl", digit_task(rng, 8, "next")),
                      test=write_jsonl(data / "test.jsonl", digit_task(rng, 16, "next")), kind="generation")
    registry = new_registry("gen-store")
    registry.register_task(spec)
    result = train_task(registry, "next-digit", fast_config(max_epochs=1), base_model=str(gpt2_dir))
    return registry, result


def test_train_register_load_reproduces_generations_exactly(trained):
    from modeling.generation import Generation, generate

    registry, result = trained
    metrics = result.version.metrics
    assert {"test_accuracy", "test_token_accuracy", "test_perplexity", "dev_accuracy"} <= set(metrics)
    prompts = ["next 3 :", "next 9 :", "next 0 :"]
    expected = generate(result.model, result.slot, prompts, max_new_tokens=5)
    predictor = registry.load("next-digit", precision="32")
    got = predictor.predict(prompts, max_new_tokens=5)
    assert all(isinstance(g, Generation) for g in got)
    assert [g.text for g in got] == [g.text for g in expected]
    torch.testing.assert_close(torch.tensor([g.score for g in got]), torch.tensor([g.score for g in expected]))


def test_classification_on_a_causal_lm_answers_with_a_label(gpt2_dir, new_registry, tmp_path):
    from continual.train import train_task
    from modeling.predictor import Prediction

    rng = random.Random(0)
    rows = [{"text": f"number {d}", "label": "even" if d % 2 == 0 else "odd"}
            for d in (rng.randrange(10) for _ in range(48))]
    spec = build_spec("parity", write_jsonl(tmp_path / "train.jsonl", rows),
                      test=write_jsonl(tmp_path / "test.jsonl", rows[:12]))
    registry = new_registry("cls-store")
    registry.register_task(spec, embed=False)
    result = train_task(registry, "parity", fast_config(max_epochs=1), base_model=str(gpt2_dir))
    assert 0.0 <= result.test_accuracy <= 1.0
    predictor = registry.load("parity")
    answers = predictor.predict(["number 4", "number 7"])
    assert all(isinstance(p, Prediction) and p.label in ("even", "odd") and 0 < p.score <= 1 for p in answers)
    assert predictor.predict_proba(["number 4"]).sum() == pytest.approx(1.0, abs=1e-5)


def test_continual_predict_prints_the_generation(trained):
    from typer.testing import CliRunner

    from continual.cli import app
    from modeling.generation import generate

    registry, result = trained
    expected = generate(result.model, result.slot, ["next 3 :"], max_new_tokens=5)[0].text
    out = CliRunner().invoke(app, ["predict", "next-digit", "next 3 :", "--max-new-tokens", "5",
                                   "--store", str(registry.local_root)])
    assert out.exit_code == 0, out.output
    assert "next-digit:1" in out.output and expected in out.output


def test_two_generation_tasks_in_a_sequence_give_a_forgetting_matrix_and_route_by_prompt(gpt2_dir, new_registry,
                                                                                          tmp_path):
    from continual.sequence import SequenceSpec, run_sequence

    rng = random.Random(0)
    registry = new_registry("seq-store")
    copy_rows = lambda n: [{"prompt": f"please repeat the digit {d} for me :", "completion": str(d)}  # noqa: E731
                           for d in (rng.randrange(10) for _ in range(n))]
    for name, make in (("next-digit", lambda n: digit_task(rng, n, "next")), ("copy-digit", copy_rows)):
        registry.register_task(build_spec(name, write_jsonl(tmp_path / name / "train.jsonl", make(32)),
                                          test=write_jsonl(tmp_path / name / "test.jsonl", make(6)), kind="generation"))
    assert registry.route(["next 4 :"])[0][0].task == "next-digit"  # the router read the prompts
    assert registry.route(["please repeat the digit 7 for me :"])[0][0].task == "copy-digit"
    spec = SequenceSpec(name="gen-seq", tasks=("next-digit", "copy-digit"), method="seq-lora",
                        config=dict(max_epochs=1, precision="32", learning_rate=1e-2, batch_size=16,
                                    eval_batch_size=16), base_model=str(gpt2_dir), task_agnostic=True)
    result = run_sequence(registry, spec)
    R = result.R
    assert R[0][0] is not None and R[1][0] is not None and R[1][1] is not None and R[0][1] is not None
    assert set(result.metrics) == {"acc", "bwt", "fwt", "forgetting"}
    parent = registry.run_info(result.parent_run_id)
    assert "acc/next-digit" in parent.data.metrics and "cl/forgetting" in parent.data.metrics


def test_an_unreadable_text_format_is_named_and_leaves_no_slot_behind(trained):
    """A manifest whose text format this version cannot read (say, written by a newer release) fails with
    one line naming the field, before anything is loaded: a retry must not find a slot that would lay text
    out with the labels' default format instead of the recorded one."""
    import json

    from modeling import lm_predictor
    from modeling.generation import GenerationError
    from modeling.manifest import CONFIG_FILE, sha256_file
    from registry import tags as T

    registry, result = trained
    version = result.version
    path = registry.local_adapter_dir(version) / CONFIG_FILE
    good = path.read_text()
    manifest = json.loads(good)
    manifest["extra"]["lm"]["system_prompt"] = "from a newer release"
    sha_tag = f"{T.SHA_PREFIX}{CONFIG_FILE}"
    prefix = f"next-digit__v{version.version}__"
    try:
        path.write_text(json.dumps(manifest))
        registry.store.set_version_tag("next-digit", version.version, sha_tag, sha256_file(path))
        for host in lm_predictor._hosts.values():  # an earlier test in this file may have loaded it
            for slot in [s for s in host.slots if s.startswith(prefix)]:
                host.remove_slot(slot)
        with pytest.raises(GenerationError, match=r"unknown fields \['system_prompt'\]"):
            registry.load(version.ref)
        assert not [s for host in lm_predictor._hosts.values() for s in host.slots if s.startswith(prefix)]
    finally:
        path.write_text(good)
        registry.store.set_version_tag("next-digit", version.version, sha_tag, sha256_file(path))
    assert registry.load(version.ref).predict(["next 3 :"], max_new_tokens=5)
