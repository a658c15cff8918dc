"""Tasks as text on a causal LM: how examples become token sequences, the model that holds a slot per
task on a decoder, log-probabilities, greedy generation and label scoring.

Text layout (`LMFormat`, recorded in the adapter manifest as `extra["lm"]` so inference lays text out
exactly as training did):

- generation, `prompt` + `completion`: the prompt text as is (after the tokenizer's BOS token when it
  has one), then the completion and the end token (EOS, or SEP for WordPiece tokenizers);
- generation, `messages`: the turns rendered with the tokenizer's chat template and its generation
  prompt (plain "role: content" lines when the tokenizer has no template), then completion + end;
- classification: an instruction naming the label set, then the text, as one user turn (chat template
  when there is one, else "... Answer:"), then the label as the completion.  Prediction scores the
  log-probability of every label (+ end token) after the prompt, so the answer is always a label.

Truncation: a prompt that does not fit is cut from the LEFT (its end, next to the answer, is kept;
a leading BOS stays); the completion is never cut: training refuses a completion that alone exceeds
`max_length` with one line naming the fix.  At inference the prompt keeps its last
`min(max_length, positions - max_new_tokens)` tokens.  Batches are padded on the LEFT, so every
sequence's last prompt token sits in the last column where generation continues, and position ids
come from the attention mask (padding never shifts positions).
"""
from __future__ import annotations

import dataclasses
import unicodedata
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from modeling.causal_lm import check_full_fine_tuning_memory, lora_targets
from modeling.kinds import KindConfig, get_kind
from modeling.model import AdapterModel, SlotInfo
from tasks.errors import ContinualError

IGNORE = -100  # label id cross-entropy skips (prompt and padding positions)
OBJECTIVES = ("generation", "classification")


class GenerationError(ContinualError):
    pass


@dataclass(frozen=True)
class Generation:
    text: str  # the generated continuation, cut at the first stop string
    score: float  # mean log-probability of the generated tokens (the end token included when produced)


# -- text layout ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LMFormat:
    """How a slot's examples become (prompt, completion) text; saved with the adapter."""

    objective: str  # "generation" or "classification"
    chat: bool  # the tokenizer has a chat template: messages and classification prompts use it
    instruction: str = ""  # classification: the instruction before the text

    @classmethod
    def for_labels(cls, labels: Sequence[str], tokenizer) -> "LMFormat":
        chat = bool(getattr(tokenizer, "chat_template", None))
        if not labels:
            return cls("generation", chat)
        return cls("classification", chat, f"Classify the text. Answer with one of: {', '.join(labels)}.")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any], what: str = "adapter") -> "LMFormat":
        fields = dataclasses.fields(cls)
        unknown = sorted(set(data) - {f.name for f in fields})
        missing = [f.name for f in fields if f.default is dataclasses.MISSING and f.name not in data]
        if unknown or missing:
            raise GenerationError(
                f"{what}: its manifest's text format {data!r} is not one this version reads (unknown fields "
                f"{unknown}, missing fields {missing}); load it with the continual-adapters version that trained it")
        if data["objective"] not in ("generation", "classification"):
            raise GenerationError(f"{what}: unknown objective {data['objective']!r} in its manifest's text format; "
                                  "expected 'generation' or 'classification'")
        return cls(**data)

    def prompt_text(self, tokenizer, text: str, text_pair: str | None = None,
                    messages: Sequence[tuple[str, str]] | None = None) -> tuple[str, bool]:
        """(the prompt as text, whether the chat template rendered it)."""
        if self.objective == "classification":
            body = f"{self.instruction}\n\n{text}" + (f"\n{text_pair}" if text_pair else "")
            messages = [("user", body)]
            if not self.chat:
                return body + "\nAnswer:", False
        elif messages is None:
            return text, False
        if self.chat:
            turns = [{"role": role, "content": content} for role, content in messages]
            return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False), True
        return "".join(f"{role}: {content}\n" for role, content in messages) + "assistant:", False

    def prompt_ids(self, tokenizer, text: str, text_pair: str | None = None,
                   messages: Sequence[tuple[str, str]] | None = None) -> list[int]:
        """Token ids of the prompt: the template's own tokens, or BOS + text where the tokenizer adds BOS."""
        prompt, templated = self.prompt_text(tokenizer, text, text_pair, messages)
        ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return ids if templated or not adds_bos(tokenizer) else [tokenizer.bos_token_id] + ids

    def completion_ids(self, tokenizer, completion: str) -> list[int]:
        # Without a chat template a class label follows "Answer:" after a space, as in running text.
        text = completion if self.chat or self.objective == "generation" else " " + completion
        return tokenizer(text, add_special_tokens=False)["input_ids"] + [end_token_id(tokenizer)]


def adds_bos(tokenizer) -> bool:
    """Whether the tokenizer starts plain text with BOS (Llama does; GPT-2 and SmolLM2 do not)."""
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def end_token_id(tokenizer) -> int:
    """The token that ends a completion: EOS, else SEP (WordPiece tokenizers have no EOS)."""
    for token_id in (tokenizer.eos_token_id, getattr(tokenizer, "sep_token_id", None)):
        if token_id is not None:
            return int(token_id)
    raise GenerationError("the tokenizer has neither an EOS nor a SEP token, so a completion cannot end; "
                          "use a tokenizer with an eos_token")


def truncate_left(ids: list[int], keep: int, bos: int | None) -> list[int]:
    """The last `keep` tokens of `ids`; a leading BOS is kept in front (so at most `keep` tokens)."""
    if len(ids) <= keep:
        return ids
    if bos is not None and ids and ids[0] == bos and keep > 1:
        return [bos] + ids[len(ids) - keep + 1:]
    return ids[len(ids) - keep:]


def encode_example(tokenizer, fmt: LMFormat, example, max_length: int) -> tuple[list[int], int]:
    """(token ids of prompt + completion, number of prompt tokens) of a `tasks.Example`, within `max_length`."""
    c = fmt.completion_ids(tokenizer, example.label)
    if len(c) >= max_length:
        raise GenerationError(f"a completion of {len(c)} tokens does not fit max_length={max_length} (the prompt is "
                              f"cut, never the completion); raise it with --set max_length={2 * len(c)}")
    p = fmt.prompt_ids(tokenizer, example.text, example.text_pair, example.messages)
    p = truncate_left(p, max_length - len(c), tokenizer.bos_token_id)
    return p + c, len(p)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, labels: Sequence[Sequence[int]] | None = None) -> dict:
    """Left-padded (B, T) input_ids and attention_mask (and labels with IGNORE on the padding)."""
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            ids[i, T - len(r):] = torch.tensor(r)
            mask[i, T - len(r):] = 1
    batch = {"input_ids": ids, "attention_mask": mask}
    if labels is not None:
        lab = torch.full((len(rows), T), IGNORE, dtype=torch.long)
        for i, r in enumerate(labels):
            lab[i, T - len(r):] = torch.tensor(r)
        batch["labels"] = lab
    return batch


def pad_id(tokenizer) -> int:
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end_token_id(tokenizer))


# -- the model -------------------------------------------------------------------------------------------------
class CausalAdapterModel(AdapterModel):
    """An `AdapterModel` on an AutoModelForCausalLM: every task answers through the base model's own
    LM head (no per-task head), and each slot's adapter kind changes how the decoder runs:
    hooked kinds and LoRA act inside it, `full` runs the slot's own copy, `prompt` prepends virtual
    token embeddings, `prefix` prepends learned keys/values through a pre-filled KV cache."""

    is_causal_lm = True

    def __init__(self, encoder: nn.Module, tokenizer):
        super().__init__(encoder, head_dropout=0.0)
        self.tokenizer = tokenizer
        self.formats: dict[str, LMFormat] = {}

    # slots
    def add_slot(self, slot: str, kind: str, config: KindConfig, labels: tuple[str, ...]) -> None:
        if slot in self.slots:
            raise ValueError(f"slot '{slot}' already exists in this model")
        if kind == "full":
            check_full_fine_tuning_memory(sum(p.numel() for p in self.encoder.parameters()))
        if hasattr(config, "target_modules") and kind in ("lora", "shared-b-lora", "shared-a-lora") \
                and not config.target_modules:
            config.target_modules = lora_targets(self.encoder.config.model_type)  # per-family default
        if kind == "prefix":
            from modeling.decoder_prefix import attach_decoder_prefix

            attach_decoder_prefix(self, slot, config)
        else:
            get_kind(kind).attach(self, slot, config)
        self.heads[slot] = nn.Identity()  # the answer comes from the base model's LM head
        self.slots[slot] = SlotInfo(kind, config, tuple(labels))
        self.formats[slot] = LMFormat.for_labels(labels, self.tokenizer)
        self.active_slot = None

    def remove_slot(self, slot: str) -> None:
        super().remove_slot(slot)
        self.formats.pop(slot, None)

    def manifest_extra(self, slot: str) -> dict[str, Any]:
        """What the adapter manifest records so inference lays text out as training did."""
        return {"lm": self.formats[slot].to_json()}

    def network(self, slot: str) -> nn.Module:
        """The decoder `slot` runs: the shared base, or the slot's own copy (full fine-tuning)."""
        return self.adapter_modules["full"][slot] if self.slots[slot].kind == "full" else self.encoder

    # forward
    def prefill(self, slot: str, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                use_cache: bool = False) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        """Run (B, T) left-padded tokens under `slot`: (logits (B, T, V), or only the last (B, 1, V) with
        `use_cache`, the cache, the attention mask the cache belongs to (B, virtual + T), the next position (B,))."""
        self.activate(slot)
        kind = self.slots[slot].kind
        net = self.network(slot)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T): padding never shifts positions
        B = input_ids.shape[0]
        if kind == "prompt":
            prompt = self.adapter_modules["prompt"][slot]
            P = prompt.embedding.num_embeddings
            words = net.get_input_embeddings()(input_ids)  # (B, T, H)
            virtual = prompt(torch.arange(P, device=input_ids.device)).to(words.dtype)  # (P, H)
            embeds = torch.cat([virtual.unsqueeze(0).expand(B, -1, -1), words], dim=1)  # (B, P+T, H)
            mask = torch.cat([attention_mask.new_ones(B, P), attention_mask], dim=1)
            positions = torch.cat([torch.arange(P, device=input_ids.device).expand(B, -1), position_ids + P], dim=1)
            out = net(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=use_cache,
                      logits_to_keep=1 if use_cache else 0)
            return out.logits if use_cache else out.logits[:, P:], out.past_key_values, mask, positions[:, -1] + 1
        cache = None
        mask = attention_mask
        if kind == "prefix":
            from modeling.decoder_prefix import prefix_cache

            cache = prefix_cache(self, slot, B)
            mask = torch.cat([attention_mask.new_ones(B, cache.get_seq_length()), attention_mask], dim=1)
        # Decoding needs only the last position's logits (logits_to_keep=1 skips the LM head elsewhere).
        out = net(input_ids=input_ids, attention_mask=mask, position_ids=position_ids, cache=cache, use_cache=use_cache,
                  logits_to_keep=1 if use_cache else 0)
        return out.logits, out.past_key_values, mask, position_ids[:, -1] + 1

    def step(self, slot: str, tokens: torch.Tensor, cache: Any, mask: torch.Tensor,
             positions: torch.Tensor) -> torch.Tensor:
        """Continue decoding: tokens (B, k) at positions (B, k) after the cache, `mask` (B, cache + k)
        already widened: logits (B, k, V).  The cache grows by k."""
        out = self.network(slot)(input_ids=tokens, attention_mask=mask, position_ids=positions, cache=cache,
                                 use_cache=True)
        return out.logits

    def forward(self, slot: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra) -> torch.Tensor:
        """Next-token logits (B, T, V) of left-padded inputs under `slot`."""
        return self.prefill(slot, input_ids, attention_mask)[0]


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log P(x_t | x_<t) for t >= 1: logits (B, T, V), ids (B, T) -> (B, T-1)."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over the completion tokens (labels != IGNORE)."""
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                           ignore_index=IGNORE)


# -- generation -------------------------------------------------------------------------------------------------
def position_limit(model: CausalAdapterModel) -> int | None:
    config = model.encoder.config
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def virtual_tokens(model: CausalAdapterModel, slot: str) -> int:
    kind = model.slots[slot].kind
    return int(getattr(model.slots[slot].config, "num_virtual_tokens", 0)) if kind in ("prompt", "prefix") else 0


def prompt_budget(model: CausalAdapterModel, slot: str, max_length: int, max_new_tokens: int) -> int:
    """How many prompt tokens generation keeps (the rest is cut from the left)."""
    limit = position_limit(model)
    keep = max_length
    if limit is not None:
        extra = virtual_tokens(model, slot) if model.slots[slot].kind == "prompt" else 0
        keep = min(keep, limit - max_new_tokens - extra)
    if keep < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens} leaves no room for the prompt in the base model's "
                              f"{limit} positions; ask for fewer new tokens")
    return keep


def _cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


@torch.no_grad()
def generate(model: CausalAdapterModel, slot: str, prompts: Sequence[str], *, max_new_tokens: int = 64,
             stop: Sequence[str] = (), batch_size: int = 8, max_length: int = 128,
             messages: Sequence[Sequence[tuple[str, str]] | None] | None = None) -> list[Generation]:
    """Greedy generations for `prompts` under `slot`, in batches of `batch_size` (left-padded).

    Hand-written greedy loop rather than `transformers.GenerationMixin.generate`: each adapter kind
    starts decoding its own way (virtual-token embeddings, a pre-filled prefix cache, a private model
    copy), which `generate` cannot express uniformly; the loop is prefill + argmax steps on the KV cache.
    """
    if max_new_tokens < 1:
        raise GenerationError(f"max_new_tokens={max_new_tokens} must be >= 1")
    tok, fmt = model.tokenizer, model.formats[slot]
    end = end_token_id(tok)
    keep = prompt_budget(model, slot, max_length, max_new_tokens)
    device = next(model.encoder.parameters()).device
    out: list[Generation] = []
    for start in range(0, len(prompts), batch_size):
        chunk = list(prompts[start:start + batch_size])
        turns = list(messages[start:start + batch_size]) if messages is not None else [None] * len(chunk)
        rows = []
        for text, m in zip(chunk, turns):
            if not text.strip() and not m:
                raise GenerationError("a prompt is empty; give each prompt some text")
            rows.append(truncate_left(fmt.prompt_ids(tok, text, messages=m), keep, tok.bos_token_id))
        batch = {k: v.to(device) for k, v in left_pad(rows, pad_id(tok)).items()}
        logits, cache, mask, positions = model.prefill(slot, batch["input_ids"], batch["attention_mask"], use_cache=True)
        logits = logits[:, -1]
        B = len(rows)
        generated: list[list[int]] = [[] for _ in range(B)]
        logps: list[list[float]] = [[] for _ in range(B)]
        done = [False] * B
        for _ in range(max_new_tokens):
            logp = torch.log_softmax(logits.float(), dim=-1)  # (B, V)
            best = logp.argmax(-1)  # (B,)
            for i in range(B):
                if done[i]:
                    continue
                token = int(best[i])
                logps[i].append(float(logp[i, token]))
                if token == end:
                    done[i] = True
                    continue
                generated[i].append(token)
                if stop and _cut_at_stop(tok.decode(generated[i], skip_special_tokens=True), stop)[1]:
                    done[i] = True
            if all(done):
                break
            tokens = torch.where(torch.tensor(done, device=device), torch.full_like(best, end), best)
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
            logits = model.step(slot, tokens[:, None], cache, mask, positions[:, None])[:, -1]
            positions = positions + 1
        for ids, lp in zip(generated, logps):
            text, _ = _cut_at_stop(tok.decode(ids, skip_special_tokens=True), stop)
            out.append(Generation(text.strip(), sum(lp) / max(len(lp), 1)))
    return out


@torch.no_grad()
def label_logprobs(model: CausalAdapterModel, slot: str, texts: Sequence[str], text_pairs: Sequence[str | None],
                   *, max_length: int = 128, batch_size: int = 8) -> torch.Tensor:
    """(N, num_labels) log P(label + end token | instruction + text) under `slot`.

    Each batch of prompts runs once; every label then continues the same KV cache (cropped back to
    the prompt after each label), so scoring costs one prompt pass plus a few label tokens per label.
    Prompts are cut from the left as in training, so that the longest label still fits.
    """
    tok, fmt = model.tokenizer, model.formats[slot]
    labels = model.slots[slot].labels
    answers = [fmt.completion_ids(tok, label) for label in labels]
    keep = max_length - max(len(a) for a in answers)
    if keep < 1:
        raise GenerationError(f"max_length={max_length} leaves no room for the prompt next to the longest label; "
                              f"raise --set max_length")
    device = next(model.encoder.parameters()).device
    scores = torch.empty(len(texts), len(labels))
    for start in range(0, len(texts), batch_size):
        rows = [truncate_left(fmt.prompt_ids(tok, t, p), keep, tok.bos_token_id)
                for t, p in zip(texts[start:start + batch_size], text_pairs[start:start + batch_size])]
        batch = {k: v.to(device) for k, v in left_pad(rows, pad_id(tok)).items()}
        logits, cache, mask, positions = model.prefill(slot, batch["input_ids"], batch["attention_mask"], use_cache=True)
        first = torch.log_softmax(logits[:, -1].float(), dim=-1)  # (B, V): the label's first token
        B = len(rows)
        for j, answer in enumerate(answers):
            ids = torch.tensor(answer, device=device).expand(B, -1)  # (B, k)
            total = first.gather(-1, ids[:, :1]).squeeze(-1)  # (B,)
            if len(answer) > 1:
                k = len(answer) - 1
                wide = torch.cat([mask, mask.new_ones(B, k)], dim=1)
                steps = positions[:, None] + torch.arange(k, device=device)  # (B, k)
                out = model.step(slot, ids[:, :-1], cache, wide, steps)  # (B, k, V)
                logp = torch.log_softmax(out.float(), dim=-1)
                total = total + logp.gather(-1, ids[:, 1:, None]).squeeze(-1).sum(-1)
                cache.crop(-k)  # back to the prompt (transformers 5: a negative count removes tokens)
            scores[start:start + B, j] = total.cpu()
    return scores


def normalize_answer(text: str) -> str:
    """Exact-match normalisation: NFKC, case-folded, whitespace collapsed, surrounding punctuation dropped."""
    text = " ".join(unicodedata.normalize("NFKC", text).casefold().split())
    return text.strip(" .,;:!?\"'")
