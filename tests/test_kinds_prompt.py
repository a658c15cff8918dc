"""prompt and prefix kinds: virtual tokens are never pooled; the prefix is exact attention over [P; T]."""
import pytest
import torch

from modeling.kinds import KindError, PrefixConfig, PromptConfig, get_kind
from modeling.model import AdapterModel, mean_pool
from tiny import tiny_model as _tiny_model


def tiny_model(layers: int = 2, attn: str = "sdpa", **extra) -> AdapterModel:
    return _tiny_model(layers=layers, attn=attn, max_position_embeddings=16, **extra)

LABELS = ("a", "b")


pytestmark = pytest.mark.usefixtures("one_thread")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.randint(1, 100, (3, 5), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(3, 5, dtype=torch.long)
    mask[1, 3:] = 0  # padding in one row: the mask path matters
    return ids, mask


def test_prompt_equals_real_tokens_in_front_and_is_not_pooled():
    model = tiny_model()
    model.add_slot("p", "prompt", PromptConfig(num_virtual_tokens=3), LABELS)
    prompt_ids = torch.tensor([7, 8, 9])
    words = model.encoder.get_input_embeddings()
    with torch.no_grad():  # virtual tokens that ARE the embeddings of tokens 7, 8, 9
        model.adapter_modules["prompt"]["p"].embedding.weight.copy_(words(prompt_ids))
    ids, mask = batch()
    with torch.no_grad():
        hidden, out_mask = get_kind("prompt").encode(model, "p", {"input_ids": ids, "attention_mask": mask})
        full = model.encoder(input_ids=torch.cat([prompt_ids.expand(3, -1), ids], 1),
                             attention_mask=torch.cat([torch.ones(3, 3, dtype=torch.long), mask], 1)).last_hidden_state
        pooled = model.embed("p", ids, mask)
    assert hidden.shape == (3, 5, 32) and torch.equal(out_mask, mask)
    torch.testing.assert_close(hidden, full[:, 3:])
    torch.testing.assert_close(pooled, mean_pool(full[:, 3:], mask))  # real tokens only


def test_prompt_sample_vocab_init_and_length_limit():
    model = tiny_model()
    model.add_slot("p", "prompt", PromptConfig(num_virtual_tokens=4), LABELS)
    vocab = model.encoder.get_input_embeddings().weight
    for row in model.adapter_modules["prompt"]["p"].embedding.weight:
        assert torch.isclose(vocab, row).all(-1).any()  # each starts as some real token's embedding
    with pytest.raises(KindError, match="num_virtual_tokens"):
        model.embed("p", torch.ones(1, 14, dtype=torch.long), torch.ones(1, 14, dtype=torch.long))  # 14 + 4 > 16
    with pytest.raises(KindError, match="--set prompt_init="):
        PromptConfig(prompt_init="text")


def manual_prefix_layer(model: AdapterModel, ids, mask, pk, pv) -> torch.Tensor:
    """One BERT layer by hand, with the keys/values (P, heads, hd) prepended: the definition of prefix tuning."""
    enc = model.encoder
    layer = enc.encoder.layer[0]
    sa = layer.attention.self
    B, T = ids.shape
    heads, hd = sa.num_attention_heads, sa.attention_head_size
    h0 = enc.embeddings(input_ids=ids)  # (B, T, H)
    split = lambda x: x.view(B, -1, heads, hd).transpose(1, 2)  # noqa: E731  (B, heads, T, hd)
    q = split(sa.query(h0))
    k = torch.cat([pk.transpose(0, 1).expand(B, -1, -1, -1), split(sa.key(h0))], 2)  # (B, heads, P+T, hd)
    v = torch.cat([pv.transpose(0, 1).expand(B, -1, -1, -1), split(sa.value(h0))], 2)
    visible = torch.cat([torch.ones(B, pk.shape[0], dtype=torch.bool), mask.bool()], 1)  # (B, P+T)
    scores = (q @ k.transpose(-1, -2)) * hd**-0.5  # (B, heads, T, P+T)
    scores = scores.masked_fill(~visible[:, None, None, :], float("-inf"))
    ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, -1)  # (B, T, H)
    attn = layer.attention.output(ctx, h0)
    return layer.output(layer.intermediate(attn), attn)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])  # float additive mask and bool mask
def test_prefix_is_attention_over_prefix_and_tokens(attn):
    model = tiny_model(layers=1, attn=attn)
    model.add_slot("p", "prefix", PrefixConfig(num_virtual_tokens=3, prefix_init="random"), LABELS)
    ids, mask = batch()
    with torch.no_grad():
        kv = model.adapter_modules["prefix"].encoders["p"](torch.arange(3)[None])  # (1, P, 2·1·H)
        kv = kv.view(3, 2, 2, 16)  # (P, k|v, heads, hd)
        expected = manual_prefix_layer(model, ids, mask, kv[:, 0], kv[:, 1])
        model.activate("p")
        hidden, out_mask = get_kind("prefix").encode(model, "p", {"input_ids": ids, "attention_mask": mask})
        model.activate(None)
        plain = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state  # no prefix once switched off
    assert torch.equal(out_mask, mask) and hidden.shape == (3, 5, 32)
    torch.testing.assert_close(hidden, expected)
    assert not torch.allclose(plain, hidden)


def test_prefix_starts_from_the_base_models_own_keys_and_values():
    model = tiny_model(layers=1)
    model.add_slot("p", "prefix", PrefixConfig(num_virtual_tokens=3), LABELS)  # prefix_init=sample_vocab
    enc, sa = model.encoder, model.encoder.encoder.layer[0].attention.self
    weight = model.adapter_modules["prefix"].encoders["p"].embedding.weight  # (P, [k_0, v_0])
    with torch.no_grad():
        for p in range(3):  # key of every vocabulary token at position p; the prefix row must be one of them
            h = enc.embeddings(input_ids=torch.arange(100)[:, None], position_ids=torch.tensor([[p]]))[:, 0]
            keys, values = sa.key(h), sa.value(h)  # (vocab, H)
            match = (keys - weight[p, :32]).abs().amax(-1).argmin()
            torch.testing.assert_close(keys[match], weight[p, :32])
            torch.testing.assert_close(values[match], weight[p, 32:])


def test_prefix_projection_count_and_validation():
    model = tiny_model()
    config = PrefixConfig(num_virtual_tokens=2, prefix_projection=True, encoder_hidden_size=8)
    model.add_slot("p", "prefix", config, LABELS)
    kind = get_kind("prefix")
    n = sum(p.numel() for p in kind.trainable_parameters(model, "p"))
    assert n == kind.per_task_parameter_count(config, model.encoder.config) == 2 * 32 + (32 * 8 + 8) + (8 * 128 + 128)
    ids, mask = batch()
    assert model.embed("p", ids, mask).shape == (3, 32)
    with pytest.raises(KindError, match="--set num_virtual_tokens="):
        PrefixConfig(num_virtual_tokens=0)


@pytest.mark.parametrize("kind,config", [("prefix", PrefixConfig(num_virtual_tokens=3)),
                                         ("prompt", PromptConfig(num_virtual_tokens=3))])
def test_gradient_checkpointing_gives_the_same_gradients(kind, config):
    grads = []
    for checkpointing in (False, True):
        model = tiny_model(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
        torch.manual_seed(5)
        model.add_slot("p", kind, config, LABELS)
        if checkpointing:  # layers are re-run during backward: the prefix must be there again
            model.encoder.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        ids, mask = batch()
        torch.nn.functional.cross_entropy(model("p", ids, mask), torch.tensor([0, 1, 0])).backward()
        grads.append([p.grad.clone() for p in get_kind(kind).trainable_parameters(model, "p")])
    for plain, checkpointed in zip(*grads):
        torch.testing.assert_close(checkpointed, plain)
