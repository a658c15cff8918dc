"""Prefix tuning on a decoder: P learned keys and values per layer, handed to the model as a pre-filled
KV cache (the way peft runs prefix tuning on causal LMs), with the attention mask widened by P
always-visible columns.  The prefix keys are position-free vectors, so the real tokens keep positions
0, 1, ... and generation simply continues the same cache.

The slot lives where the `prefix` kind keeps it (`adapter_modules["prefix"].encoders[slot]`, a peft
`PrefixEncoder`), so saving, loading and training it are the kind's own; only attaching differs:
the BERT path hooks every self-attention, a decoder takes the cache instead.  With grouped-query
attention (Llama, SmolLM2) a layer's keys have `num_key_value_heads` heads, so a virtual token holds
2·L·(kv_heads·head_dim) numbers, laid out [k_0, v_0, k_1, v_1, ...] as in peft.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from modeling.kinds import KindConfig
from modeling.kinds.prompt import PrefixConfig, PrefixLayers

if TYPE_CHECKING:
    from modeling.generation import CausalAdapterModel


def kv_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder config (GPT-2 and Llama names both work)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return config.num_hidden_layers, kv_heads, head_dim


def _layers(model: "CausalAdapterModel") -> PrefixLayers:
    if "prefix" not in model.adapter_modules:
        # Created here, without the BERT hooks: the prefix kind's own _layers() then finds it.
        model.adapter_modules["prefix"] = PrefixLayers(model.encoder.config.num_hidden_layers)
    return model.adapter_modules["prefix"]  # type: ignore[return-value]


def attach_decoder_prefix(model: "CausalAdapterModel", slot: str, config: KindConfig) -> None:
    from peft import PrefixTuningConfig
    from peft.tuners.prefix_tuning import PrefixEncoder

    assert isinstance(config, PrefixConfig)
    L, kv_heads, head_dim = kv_shape(model.encoder.config)
    peft_config = PrefixTuningConfig(
        num_virtual_tokens=config.num_virtual_tokens, token_dim=kv_heads * head_dim, num_layers=L,
        num_attention_heads=kv_heads, encoder_hidden_size=config.encoder_hidden_size,
        prefix_projection=config.prefix_projection, num_transformer_submodules=1,
    )
    weight = model.encoder.get_input_embeddings().weight
    encoder = PrefixEncoder(peft_config).to(weight.device, weight.dtype)
    if config.prefix_init == "sample_vocab" and not config.prefix_projection:
        with torch.no_grad():
            encoder.embedding.weight.copy_(_vocab_keys_values(model, config.num_virtual_tokens))
    _layers(model).encoders[slot] = encoder


@torch.no_grad()
def _vocab_keys_values(model: "CausalAdapterModel", P: int) -> torch.Tensor:
    """(P, 2·L·D): the base decoder's own cached keys/values for P random vocabulary tokens (Li & Liang:
    real activations train better than noise)."""
    net = model.encoder
    model.activate(None)
    ids = torch.randint(net.config.vocab_size, (1, P), device=net.get_input_embeddings().weight.device)
    was_training = net.training
    net.eval()
    try:
        cache = net(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
    finally:
        net.train(was_training)
    parts = []
    for layer in cache.layers:  # keys/values (1, kv_heads, P, head_dim) -> (P, kv_heads·head_dim)
        parts += [layer.keys[0].transpose(0, 1).reshape(P, -1), layer.values[0].transpose(0, 1).reshape(P, -1)]
    return torch.cat(parts, dim=-1)


def prefix_cache(model: "CausalAdapterModel", slot: str, batch: int):
    """A fresh `DynamicCache` holding `slot`'s prefix for a batch: per layer (B, kv_heads, P, head_dim).

    Rebuilt from the parameters on every forward (the cache is appended to in place, and gradients
    must reach the prefix encoder)."""
    from transformers import DynamicCache

    encoder = _layers(model).encoders[slot]
    L, kv_heads, head_dim = kv_shape(model.encoder.config)
    P = encoder.embedding.num_embeddings
    kv = encoder(torch.arange(P, device=encoder.embedding.weight.device).unsqueeze(0))[0]  # (P, 2·L·D)
    D = kv_heads * head_dim
    cache = DynamicCache(config=model.encoder.config)
    dtype = model.encoder.get_input_embeddings().weight.dtype
    for layer in range(L):
        split = lambda x: x.view(P, kv_heads, head_dim).transpose(0, 1).unsqueeze(0).expand(batch, -1, -1, -1)  # noqa: E731
        k = split(kv[:, 2 * layer * D:(2 * layer + 1) * D]).to(dtype)
        v = split(kv[:, (2 * layer + 1) * D:(2 * layer + 2) * D]).to(dtype)
        cache.update(k, v, layer)
    return cache
