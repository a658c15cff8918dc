"""Tiny random models for unit tests (imported by test modules; pytest puts tests/ on sys.path)."""
from __future__ import annotations

import torch
from transformers import BertConfig, BertModel

from modeling.model import AdapterModel


def tiny_bert(seed: int = 0, layers: int = 2, attn: str | None = None, **extra) -> BertModel:
    """A frozen, eval-mode BERT: vocab 100, hidden 32, 2 heads; the same weights for the same seed."""
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, **extra)
    if attn is not None:
        config._attn_implementation = attn
    return BertModel(config).eval().requires_grad_(False)


def tiny_model(seed: int = 0, layers: int = 2, attn: str | None = None, **extra) -> AdapterModel:
    """An `AdapterModel` on `tiny_bert(...)`, in eval mode."""
    return AdapterModel(tiny_bert(seed, layers, attn, **extra)).eval()
