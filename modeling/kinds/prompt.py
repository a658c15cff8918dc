"""Prompt tuning and prefix tuning, per task, with peft's parameterisations.

prompt (Lester et al. 2021): P learned input embeddings (peft `PromptEmbedding`) are prepended to the
token embeddings and the attention mask; the hidden states of the virtual tokens are cut off before
pooling, so only real tokens are pooled.

prefix (Li & Liang 2021): P learned keys and values per layer (peft `PrefixEncoder`) are prepended to
every self-attention's keys and values.  transformers 5.x BertModel can't take such a prefix from
outside: a `cache` (the former past_key_values) handed to it shifts the position ids by its length,
gets appended to in place, and the padding mask is still built for the real tokens only (checked on
transformers 5.24).  So the prefix goes in through a forward pre-hook on each self-attention module that,
while a prefix slot is active, (a) hands it a `cache` object whose `update` returns [prefix; keys]
and [prefix; values] and (b) widens the attention mask by P always-visible columns.  Queries, and so
the hidden states that get pooled, stay those of the real tokens.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from modeling.kinds.base import AdapterKind, KindConfig, KindError, KindLayers
from modeling.kinds.hooks import add_kind_hook

if TYPE_CHECKING:
    from modeling.model import AdapterModel


def _check_tokens(n: int) -> None:
    if n < 1:
        raise KindError(f"num_virtual_tokens={n} must be >= 1; set --set num_virtual_tokens=20 for example")


# --- prompt tuning -------------------------------------------------------------------------------


@dataclasses.dataclass
class PromptConfig(KindConfig):
    num_virtual_tokens: int = 20  # P, learned input embeddings prepended to every input
    # "sample_vocab" starts each virtual token at a random vocabulary token's embedding (peft's
    # SAMPLE_VOCAB: right scale from step 0); "random" is N(0, 1) like a fresh nn.Embedding.
    prompt_init: str = "sample_vocab"

    def __post_init__(self) -> None:
        _check_tokens(self.num_virtual_tokens)
        if self.prompt_init not in ("sample_vocab", "random"):
            raise KindError(f"prompt_init={self.prompt_init!r} is not sample_vocab or random; set --set prompt_init=sample_vocab")


class PromptTuningKind(AdapterKind):
    name = "prompt"
    config_cls = PromptConfig

    def new_layers(self, model: "AdapterModel") -> nn.ModuleDict:
        return nn.ModuleDict()  # slot -> peft PromptEmbedding

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        from peft import PromptTuningConfig
        from peft.tuners.prompt_tuning import PromptEmbedding

        assert isinstance(config, PromptConfig)
        words = model.encoder.get_input_embeddings()
        peft_config = PromptTuningConfig(
            num_virtual_tokens=config.num_virtual_tokens, token_dim=words.embedding_dim, num_transformer_submodules=1,
            prompt_tuning_init=config.prompt_init.upper(),
        )
        self.layers(model)[slot] = PromptEmbedding(peft_config, words).to(words.weight.device, words.weight.dtype)

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        pass  # encode() reads the slot's prompt directly; nothing sits in the encoder to switch

    def encode(self, model: "AdapterModel", slot: str, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        inputs = dict(inputs)
        input_ids, mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        if "position_ids" in inputs:
            raise KindError("prompt tuning sets the positions itself; call it without position_ids")
        prompt = self.layers(model)[slot]
        P = prompt.embedding.num_embeddings
        B, T = input_ids.shape
        limit = getattr(model.encoder.config, "max_position_embeddings", None)
        if limit is not None and P + T > limit:
            raise KindError(f"{T} tokens + {P} virtual tokens exceed the base model's {limit} positions; "
                            f"truncate inputs to {limit - P} tokens or lower --set num_virtual_tokens")
        words = model.encoder.get_input_embeddings()(input_ids)  # (B, T, H)
        virtual = prompt(torch.arange(P, device=input_ids.device)).to(words.dtype)  # (P, H)
        embeds = torch.cat([virtual.unsqueeze(0).expand(B, -1, -1), words], dim=1)  # (B, P+T, H)
        full_mask = torch.cat([mask.new_ones(B, P), mask], dim=1)  # (B, P+T)
        if "token_type_ids" in inputs:
            inputs["token_type_ids"] = torch.cat([inputs["token_type_ids"].new_zeros(B, P), inputs["token_type_ids"]], 1)
        hidden = model.encoder(inputs_embeds=embeds, attention_mask=full_mask, **inputs).last_hidden_state
        return hidden[:, P:], mask  # (B, T, H): the virtual tokens are not pooled

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.layers(model)[slot].state_dict().items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        _load_module(self.layers(model)[slot], state, self.name)

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return list(self.layers(model)[slot].parameters())

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """P · H."""
        assert isinstance(config, PromptConfig)
        return config.num_virtual_tokens * base_config.hidden_size

    def drop(self, model: "AdapterModel", slot: str) -> None:
        self.drop_from(model, self.layers(model), slot)


def _load_module(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise KindError(f"{what} weights do not fit: {str(err).splitlines()[0]}") from None


# --- prefix tuning -------------------------------------------------------------------------------


@dataclasses.dataclass
class PrefixConfig(KindConfig):
    num_virtual_tokens: int = 20  # P, learned keys and values prepended in every self-attention layer
    # Reparameterise the prefix through a 2-layer MLP (peft's prefix_projection; Li & Liang's trick
    # for stabler training); the MLP is stored with the adapter, so it costs storage.
    prefix_projection: bool = False
    encoder_hidden_size: int = 512  # hidden width of that MLP (only with prefix_projection)
    # "sample_vocab": start from the base model's own keys/values for P random vocabulary tokens (Li &
    # Liang: real activations train better than noise); "random": peft's N(0, 1).  prefix_projection
    # always starts random, since the MLP's output can't be set directly.
    prefix_init: str = "sample_vocab"

    def __post_init__(self) -> None:
        _check_tokens(self.num_virtual_tokens)
        if self.encoder_hidden_size < 1:
            raise KindError(f"encoder_hidden_size={self.encoder_hidden_size} must be >= 1; set --set encoder_hidden_size=512")
        if self.prefix_init not in ("sample_vocab", "random"):
            raise KindError(f"prefix_init={self.prefix_init!r} is not sample_vocab or random; set --set prefix_init=sample_vocab")


class _PrefixCache:
    """Quacks like a transformers Cache for one self-attention call: prepends one layer's prefix."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor):
        self.key, self.value = key, value  # (1, heads, P, head_dim)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        B = key.shape[0]  # key, value: (B, heads, T, head_dim) -> (B, heads, P+T, head_dim)
        return (torch.cat([self.key.expand(B, -1, -1, -1).to(key.dtype), key], dim=2),
                torch.cat([self.value.expand(B, -1, -1, -1).to(value.dtype), value], dim=2))


def _widen_mask(mask: torch.Tensor | None, P: int) -> torch.Tensor | None:
    """Prepend P visible key columns to an attention mask (None: nothing is masked; stays None)."""
    if mask is None:
        return None
    if mask.dim() != 4:  # (B, 1, T_q, T_k) from create_bidirectional_mask
        raise KindError(f"prefix tuning needs a 4-d attention mask, got shape {tuple(mask.shape)}; use attn_implementation sdpa or eager")
    visible = torch.ones if mask.dtype == torch.bool else torch.zeros  # bool: True = attend; float: additive 0
    return torch.cat([visible(*mask.shape[:-1], P, dtype=mask.dtype, device=mask.device), mask], dim=-1)


class PrefixLayers(KindLayers):
    """adapter_modules["prefix"]: slot -> peft PrefixEncoder; `active` is the slot the hooks inject."""

    def __init__(self, num_layers: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict()  # slot -> PrefixEncoder: (1, P) -> (1, P, 2·L·H)
        self.num_layers = num_layers

    def layer_prefix(self, layer: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The active slot's keys and values for `layer`, each (1, heads, P, head_dim).

        Recomputed from the parameters at every call (not cached per forward), so gradient
        checkpointing's recomputation sees the same prefix.  peft's layout: the 2·L·H features of a
        virtual token are [k_0, v_0, k_1, v_1, ...], each H = heads x head_dim.
        """
        encoder = self.encoders[self.active]
        P = encoder.embedding.num_embeddings
        kv = encoder(torch.arange(P, device=encoder.embedding.weight.device).unsqueeze(0))[0]  # (P, 2·L·H)
        H = kv.shape[-1] // (2 * self.num_layers)
        k, v = kv[:, 2 * layer * H:(2 * layer + 1) * H], kv[:, (2 * layer + 1) * H:(2 * layer + 2) * H]  # (P, H)
        split = lambda x: x.view(P, heads, H // heads).transpose(0, 1).unsqueeze(0)  # noqa: E731
        return split(k), split(v)


def _inject_prefix(layers: "PrefixLayers", module: nn.Module, args: tuple, kwargs: dict, *, layer: int, heads: int):
    """Pre-hook of self-attention `layer`: while a prefix slot is active, its keys/values go in."""
    if layers.active is None:
        return None
    key, value = layers.layer_prefix(layer, heads)  # (1, heads, P, head_dim) each
    kwargs["cache"] = _PrefixCache(key, value)
    kwargs["attention_mask"] = _widen_mask(kwargs.get("attention_mask"), key.shape[2])
    return args, kwargs


def self_attentions(encoder: nn.Module) -> list[nn.Module]:
    found = [m for n, m in encoder.named_modules() if n.endswith("attention.self")]
    if len(found) != encoder.config.num_hidden_layers:
        raise KindError(f"prefix tuning supports BERT-style encoders (model type '{encoder.config.model_type}' is not); "
                        f"use --method prompt or --method lora")
    return found


class PrefixTuningKind(AdapterKind):
    name = "prefix"
    config_cls = PrefixConfig

    def new_layers(self, model: "AdapterModel") -> PrefixLayers:
        """Empty layers, with a pre-hook on every self-attention that injects the active slot's prefix."""
        layers, heads = PrefixLayers(model.encoder.config.num_hidden_layers), model.encoder.config.num_attention_heads
        for i, attn in enumerate(self_attentions(model.encoder)):
            add_kind_hook(layers, attn, functools.partial(_inject_prefix, layer=i, heads=heads), pre=True)
        return layers

    def attach(self, model: "AdapterModel", slot: str, config: KindConfig) -> None:
        from peft import PrefixTuningConfig
        from peft.tuners.prefix_tuning import PrefixEncoder

        assert isinstance(config, PrefixConfig)
        layers, c = self.layers(model), model.encoder.config
        peft_config = PrefixTuningConfig(
            num_virtual_tokens=config.num_virtual_tokens, token_dim=c.hidden_size, num_layers=c.num_hidden_layers,
            num_attention_heads=c.num_attention_heads, encoder_hidden_size=config.encoder_hidden_size,
            prefix_projection=config.prefix_projection, num_transformer_submodules=1,
        )
        weight = model.encoder.get_input_embeddings().weight
        encoder = PrefixEncoder(peft_config).to(weight.device, weight.dtype)
        if config.prefix_init == "sample_vocab" and not config.prefix_projection:
            with torch.no_grad():
                encoder.embedding.weight.copy_(self._vocab_keys_values(model, config.num_virtual_tokens))
        layers.encoders[slot] = encoder

    def _vocab_keys_values(self, model: "AdapterModel", P: int) -> torch.Tensor:
        """(P, 2·L·H): per virtual token [k_0, v_0, k_1, v_1, ...], each the base model's own (H,)."""
        encoder = model.encoder
        model.activate(None)  # the base model's activations, not some slot's
        ids = torch.randint(encoder.config.vocab_size, (1, P), device=encoder.get_input_embeddings().weight.device)
        was_training = encoder.training
        encoder.eval()
        try:
            hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
        finally:
            encoder.train(was_training)
        parts = []
        for layer, attn in enumerate(self_attentions(encoder)):  # hidden[layer] is that layer's input (1, P, H)
            parts += [attn.key(hidden[layer])[0], attn.value(hidden[layer])[0]]
        return torch.cat(parts, dim=-1)

    def activate(self, model: "AdapterModel", slot: str | None) -> None:
        layers = self.layers(model)
        layers.active = slot if slot in layers.encoders else None
        # encode() is the default one: the hooks add the prefix to keys and values only, so the
        # hidden states (and the pooling over them) are those of the real tokens.

    def slot_state_dict(self, model: "AdapterModel", slot: str) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.layers(model).encoders[slot].state_dict().items()}

    def load_slot_state(self, model: "AdapterModel", slot: str, state: dict[str, torch.Tensor]) -> None:
        _load_module(self.layers(model).encoders[slot], state, self.name)

    def trainable_parameters(self, model: "AdapterModel", slot: str) -> list[nn.Parameter]:
        return list(self.layers(model).encoders[slot].parameters())

    def per_task_parameter_count(self, config: KindConfig, base_config: Any) -> int:
        """P·2LH; with prefix_projection P·H + (H·E + E) + (E·2LH + 2LH)  (E = encoder_hidden_size)."""
        assert isinstance(config, PrefixConfig)
        P, H, E = config.num_virtual_tokens, base_config.hidden_size, config.encoder_hidden_size
        out = 2 * base_config.num_hidden_layers * H
        if not config.prefix_projection:
            return P * out
        return P * H + (H * E + E) + (E * out + out)

    def drop(self, model: "AdapterModel", slot: str) -> None:
        self.drop_from(model, self.layers(model).encoders, slot)
