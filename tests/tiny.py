"""Tiny random models and small helpers for unit tests (imported by test modules; pytest puts tests/ on sys.path)."""
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


def kind_configs() -> dict:
    """Small settings for every adapter kind (fresh objects each call: attach fills in defaults)."""
    from modeling.kinds import (
        BottleneckConfig, FullConfig, HyperLoraConfig, LoraKindConfig, OsfConfig, PrefixConfig, PromptConfig, SharedLoraConfig, TaskEmbeddingConfig,
    )

    return {
        "lora": LoraKindConfig(r=2, lora_dropout=0.0),
        "shared-b-lora": SharedLoraConfig(r=2, lora_dropout=0.0),
        "shared-a-lora": SharedLoraConfig(r=2, lora_dropout=0.0),
        "task-embedding": TaskEmbeddingConfig(bottleneck=8, task_embedding_dim=4),
        "hyper-lora": HyperLoraConfig(r=2, lora_dropout=0.0, task_embedding_dim=3),
        "adapter": BottleneckConfig(bottleneck=8),
        "prefix": PrefixConfig(num_virtual_tokens=3),
        "prompt": PromptConfig(num_virtual_tokens=3),
        "full": FullConfig(),
        "osf-svd": OsfConfig(effective_rank=0.5),
    }


def perturb(model: AdapterModel, slot: str, seed: int) -> None:
    """Stand-in for training: random values in every trainable parameter of `slot`, so zero-initialised
    parts (LoRA's B, a bottleneck's up-projection) change outputs too."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters(slot):
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def one_line(fn, *args, **kwargs) -> str:
    """The message of the ContinualError `fn(*args, **kwargs)` raises, asserted to be one line."""
    import pytest

    from tasks.errors import ContinualError

    with pytest.raises(ContinualError) as info:
        fn(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message
