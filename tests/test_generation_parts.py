"""Generation parts without training: data errors, truncation, every adapter kind on decoders, messages."""
from __future__ import annotations

import pytest
import torch

from lm_tiny import save_tiny_lm, write_jsonl
from tasks.errors import ContinualError
from tasks.loaders import Example, build_spec, load_split
from tiny import one_line

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def base(request, tmp_path_factory):
    from modeling.base_model import load_base_model

    folder = save_tiny_lm(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param, chat=request.param == "llama")
    return load_base_model(str(folder))


def test_missing_completion_and_empty_prompt_each_get_one_line(tmp_path):
    missing = write_jsonl(tmp_path / "a.jsonl", [{"prompt": "2+2=", "answer": "4"}])
    msg = one_line(build_spec, "qa", missing, kind="generation")
    assert "missing field 'completion'" in msg and "--label-field" in msg
    empty = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "  ", "completion": "4"}])
    assert "the prompt ('prompt') is empty" in one_line(build_spec, "qa", empty, kind="generation")


def test_messages_rows_split_into_prompt_turns_and_completion(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]},
            {"messages": [{"role": "user", "content": "2+2?"}], "completion": "4"}]
    spec = build_spec("chat", write_jsonl(tmp_path / "c.jsonl", rows), kind="generation", text_fields=["messages"])
    first, second = load_split(spec, "train")
    assert first == Example("user: Hi", "Hello!", messages=(("user", "Hi"),))
    assert second.messages == (("user", "2+2?"),) and second.label == "4"
    bad = write_jsonl(tmp_path / "d.jsonl", [{"messages": [{"role": "user", "content": "Hi"}]}])
    assert "no completion" in one_line(build_spec, "chat", bad, kind="generation", text_fields=["messages"])


def test_a_generation_task_on_an_encoder_is_refused_in_one_line(tiny_base_dir, new_registry, tmp_path):
    from continual.train import train_task

    spec = build_spec("qa", write_jsonl(tmp_path / "q.jsonl", [{"prompt": "2+2=", "completion": "4"}]),
                      kind="generation")
    registry = new_registry("refuse-store")
    registry.register_task(spec, embed=False)
    msg = one_line(train_task, registry, "qa", base_model=str(tiny_base_dir))
    assert "is a generation task but base model" in msg and "--base-model smollm2-135m" in msg
    assert registry.versions("qa") == []


def test_over_long_prompts_are_cut_from_the_left_never_the_completion(base):
    from modeling.generation import CausalAdapterModel, GenerationError, LMFormat, encode_example, generate
    from modeling.kinds import get_kind

    tok = base.tokenizer
    fmt = LMFormat.for_labels((), tok)
    words = " ".join(f"w{i}" for i in range(400))
    ids, n_prompt = encode_example(tok, fmt, Example(words + " end", "answer"), max_length=32)
    completion = fmt.completion_ids(tok, "answer")
    assert len(ids) == 32 and ids[n_prompt:] == completion  # the completion is whole
    assert ids[:n_prompt] == fmt.prompt_ids(tok, words + " end")[-n_prompt:]  # the prompt's END is kept
    with pytest.raises(GenerationError, match="max_length"):
        encode_example(tok, fmt, Example("x", " ".join(["long"] * 40)), max_length=16)
    model = CausalAdapterModel(base.fresh_encoder(), tok)
    model.add_slot("t", "lora", get_kind("lora").make_config({}), ())
    # 400+ prompt tokens on a model with 128 positions: truncated, generated, no crash.
    out = generate(model, "t", [words, "short"], max_new_tokens=6, max_length=512)
    assert len(out) == 2 and all(isinstance(g.text, str) for g in out)
    with pytest.raises(GenerationError, match="empty"):
        generate(model, "t", ["  "], max_new_tokens=2)


def test_lora_default_targets_per_family_and_their_parameter_count(base):
    """Llama-style decoders adapt every attention and MLP projection; GPT-2 keeps c_attn."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from modeling.causal_lm import DECODER_PROJECTIONS
    from modeling.generation import CausalAdapterModel
    from modeling.kinds import get_kind

    model = CausalAdapterModel(base.fresh_encoder(), base.tokenizer)
    config = get_kind("lora").make_config({"r": 4})
    model.add_slot("t", "lora", config, ())
    adapted = {name.rsplit(".", 1)[-1] for name, m in model.encoder.named_modules() if isinstance(m, BaseTunerLayer)}
    expected = DECODER_PROJECTIONS if base.encoder.config.model_type == "llama" else ["c_attn"]
    assert config.target_modules == expected and adapted == set(expected)
    trained = sum(p.numel() for p in model.trainable_parameters("t"))
    assert trained == get_kind("lora").per_task_parameter_count(config, base.encoder.config)


def test_classification_loss_covers_only_the_label_and_end_token(base):
    from continual.lm_training import LMDataset
    from modeling.generation import IGNORE, CausalAdapterModel, end_token_id
    from modeling.kinds import get_kind

    model = CausalAdapterModel(base.fresh_encoder(), base.tokenizer)
    model.add_slot("c", "lora", get_kind("lora").make_config({}), ("World", "Sports"))
    (ids, labels), = LMDataset([Example("a match report", "Sports")], model, "c", max_length=64).rows
    answer = model.formats["c"].completion_ids(base.tokenizer, "Sports")
    assert answer[-1] == end_token_id(base.tokenizer)
    assert labels == [IGNORE] * (len(ids) - len(answer)) + answer and ids[-len(answer):] == answer


KINDS = ["lora", "shared-b-lora", "shared-a-lora", "task-embedding", "adapter", "prefix", "prompt", "full"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_trains_generates_and_round_trips_on_a_decoder(base, kind, tmp_path):
    from modeling.generation import IGNORE, CausalAdapterModel, generate, left_pad, lm_loss
    from modeling.kinds import get_kind
    from modeling.manifest import AdapterManifest, load_adapter_into, write_adapter_dir

    settings = {"num_virtual_tokens": 4, "bottleneck": 8}
    model = CausalAdapterModel(base.fresh_encoder(), base.tokenizer)
    torch.manual_seed(0)
    model.add_slot("t", kind, get_kind(kind).make_config(settings), ())
    params = model.trainable_parameters("t")
    assert params
    for p in params:
        p.requires_grad_(True)
    batch = left_pad([[5, 6, 7, 8], [9, 10]], 0, [[IGNORE, IGNORE, 7, 8], [IGNORE, 10]])
    model.train()
    lm_loss(model("t", batch["input_ids"], batch["attention_mask"]), batch["labels"]).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)
    with torch.no_grad():  # move every parameter so a round trip that dropped one would show
        for p in params:
            p.add_(0.05 * torch.randn_like(p))
    model.eval()
    expected = generate(model, "t", ["a b c", "d"], max_new_tokens=4)
    manifest = AdapterManifest("t", kind, model.slots["t"].config.to_dict(), [], base.model_id, base.fingerprint,
                               extra=model.manifest_extra("t"))
    write_adapter_dir(tmp_path / "adapter", model, "t", manifest)
    other = CausalAdapterModel(base.fresh_encoder(), base.tokenizer)
    load_adapter_into(other, "t2", tmp_path / "adapter")
    assert generate(other.eval(), "t2", ["a b c", "d"], max_new_tokens=4) == expected


def test_full_fine_tuning_is_refused_when_memory_is_short():
    from modeling.causal_lm import CausalLMError, check_full_fine_tuning_memory

    msg = one_line(check_full_fine_tuning_memory, 1_000_000_000, available=2 * 2**30)
    assert "needs about 14.9 GiB" in msg and "--method lora" in msg
    check_full_fine_tuning_memory(1_000, available=2 * 2**30)
    assert issubclass(CausalLMError, ContinualError)


def test_messages_use_the_chat_template_and_labels_are_scored(base):
    from modeling.generation import CausalAdapterModel, LMFormat, label_logprobs
    from modeling.kinds import get_kind

    tok = base.tokenizer
    fmt = LMFormat.for_labels((), tok)
    text, templated = fmt.prompt_text(tok, "", messages=[("user", "hi")])
    assert templated == bool(tok.chat_template)
    if templated:
        assert text.endswith("assistant:") and "user: hi" in text
    model = CausalAdapterModel(base.fresh_encoder(), tok)
    model.add_slot("c", "lora", get_kind("lora").make_config({}), ("yes", "no", "maybe not"))
    scores = label_logprobs(model, "c", ["is it?", "a much longer question here"], [None, None], batch_size=4)
    assert scores.shape == (2, 3) and torch.isfinite(scores).all() and (scores < 0).all()
    # One forward per (text, label) gives the same numbers as the shared-cache scoring.
    fmt = model.formats["c"]
    for j, label in enumerate(("yes", "no", "maybe not")):
        prompt, answer = fmt.prompt_ids(tok, "is it?"), fmt.completion_ids(tok, label)
        ids = torch.tensor([prompt + answer])
        with torch.no_grad():
            logp = torch.log_softmax(model("c", ids, torch.ones_like(ids)).float(), -1)[0, :-1]
        direct = logp.gather(-1, ids[0, 1:, None]).squeeze(-1)[-len(answer):].sum()
        torch.testing.assert_close(scores[0, j], direct, atol=1e-4, rtol=1e-4)
