"""Training and evaluating slots of a `CausalAdapterModel`: generation tasks, and classification tasks
answered as text on a causal LM.

Loss: the autoregressive cross-entropy −Σ_t log P(x_t | x_<t) over the completion tokens only (the
prompt and the padding are masked out).  The dev metric logged during training as `dev/accuracy`
(which keep-best weights and early stopping watch) is teacher-forced token accuracy on the completion:
greedy generation at every evaluation would cost far more.  After training `lm_evaluate` gives
the figures that are logged like a classifier's accuracy:

- `accuracy`: generation tasks: exact match of the greedy generation after `normalize_answer`;
  classification: the label with the highest log-probability (never outside the label set);
- `token_accuracy`: share of completion tokens predicted right with the gold prefix;
- `perplexity`: exp of the mean completion-token cross-entropy over the whole split.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from continual.config import TrainConfig
from continual.module import SlotTraining
from modeling.generation import (
    IGNORE, CausalAdapterModel, encode_example, generate, label_logprobs, left_pad, lm_loss, normalize_answer, pad_id,
)
from modeling.hardware import autocast
from tasks.loaders import Example


class LMDataset(Dataset):
    """Examples tokenised once: prompt + completion ids, labels IGNORE on the prompt."""

    def __init__(self, examples: Sequence[Example], model: CausalAdapterModel, slot: str, max_length: int):
        fmt, tok = model.formats[slot], model.tokenizer
        self.rows: list[tuple[list[int], list[int]]] = []
        for e in examples:
            ids, n_prompt = encode_example(tok, fmt, e, max_length)
            self.rows.append((ids, [IGNORE] * n_prompt + ids[n_prompt:]))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[list[int], list[int]]:
        return self.rows[i]


def lm_loader(dataset: LMDataset, tokenizer, batch_size: int, shuffle: bool, seed: int = 0) -> DataLoader:
    pad = pad_id(tokenizer)
    collate = lambda rows: left_pad([r[0] for r in rows], pad, [r[1] for r in rows])  # noqa: E731
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


def completion_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[int, int, float]:
    """(right tokens, completion tokens, summed NLL) of a batch, teacher-forced."""
    target = labels[:, 1:]
    keep = target != IGNORE
    logits = logits[:, :-1].float()
    right = int(((logits.argmax(-1) == target) & keep).sum())
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                            ignore_index=IGNORE, reduction="sum")
    return right, int(keep.sum()), float(nll)


class CausalLMTraining(SlotTraining):
    """Trains one slot of a `CausalAdapterModel` on completion tokens."""

    def __init__(self, model: CausalAdapterModel, slot: str, config: TrainConfig, total_steps: int, extra_loss=None):
        super().__init__(model, config, total_steps, extra_loss)
        self.slot = slot
        self._right = self._seen = 0

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.model.trainable_parameters(self.slot)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(self.slot, input_ids, attention_mask)  # (B, T, V)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = lm_loss(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        if self.extra_loss is not None:
            loss = loss + self.extra_loss()
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=len(batch["input_ids"]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._right = self._seen = 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        right, seen, _ = completion_hits(self(batch["input_ids"], batch["attention_mask"]), batch["labels"])
        self._right += right
        self._seen += seen

    def on_validation_epoch_end(self) -> None:
        self.log("dev/accuracy", self._right / max(self._seen, 1), prog_bar=True)


def fit_lm_slot(model: CausalAdapterModel, slot: str, config: TrainConfig, train: list[Example], dev: list[Example],
                *, logger=None, show_progress: bool = False, extra_loss=None,
                callbacks: list | None = None) -> tuple[int, float | None]:
    """`continual.train.fit_slot` for a causal LM: train `slot` in place; (optimizer steps, best dev token accuracy)."""
    from continual.trainer import build_trainer, total_steps

    from continual.train import TrainError

    if config.unfreeze_schedule:
        raise TrainError("progressive unfreezing is not supported on causal LMs yet; drop --set unfreeze_schedule")
    if config.head_lr_scale != 1.0:
        raise TrainError(f"head_lr_scale={config.head_lr_scale:g} scales classification heads; a causal LM has none "
                         f"(its LM head is the base model's, frozen): drop --set head_lr_scale")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.trainable_parameters(slot):
        p.requires_grad_(True)
    tok = model.tokenizer
    train_loader = lm_loader(LMDataset(train, model, slot, config.max_length), tok, config.batch_size, True, config.seed)
    dev_loader = (lm_loader(LMDataset(dev, model, slot, config.max_length), tok, config.eval_batch_size, False)
                  if dev else None)
    module = CausalLMTraining(model, slot, config, total_steps(config, len(train_loader)), extra_loss=extra_loss)
    trainer, keep_best = build_trainer(config, train_batches=len(train_loader), has_dev=dev_loader is not None,
                                       logger=logger, show_progress=show_progress, callbacks=callbacks)
    model.train()
    trainer.fit(module, train_loader, dev_loader)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return trainer.global_step, (keep_best.best if keep_best else None)


@torch.no_grad()
def teacher_forced(model: CausalAdapterModel, slot: str, examples: Sequence[Example], *, max_length: int,
                   batch_size: int, precision: str) -> tuple[float, float]:
    """(token accuracy, perplexity) of `slot` on the completions of `examples`."""
    device = next(model.parameters()).device
    right = seen = 0
    nll = 0.0
    for batch in lm_loader(LMDataset(examples, model, slot, max_length), model.tokenizer, batch_size, False):
        batch = {k: v.to(device) for k, v in batch.items()}
        with autocast(precision, device.type):
            logits = model(slot, batch["input_ids"], batch["attention_mask"])
        r, s, n = completion_hits(logits, batch["labels"])
        right, seen, nll = right + r, seen + s, nll + n
    return right / max(seen, 1), math.exp(nll / max(seen, 1))


@torch.no_grad()
def predict_answers(model: CausalAdapterModel, slot: str, examples: Sequence[Example], *, max_length: int,
                    batch_size: int, precision: str) -> list[str]:
    """`slot`'s answer to each example: the best-scoring label, or the greedy generation."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with autocast(precision, device.type):
            if model.formats[slot].objective == "classification":
                labels = model.slots[slot].labels
                scores = label_logprobs(model, slot, [e.text for e in examples], [e.text_pair for e in examples],
                                        max_length=max_length, batch_size=batch_size)
                return [labels[i] for i in scores.argmax(-1).tolist()]
            tok = model.tokenizer
            # Room for the longest gold answer and a little more: a longer generation cannot match exactly.
            longest = max(len(tok(e.label, add_special_tokens=False)["input_ids"]) for e in examples)
            gens = generate(model, slot, [e.text for e in examples], max_new_tokens=longest + 4,
                            batch_size=batch_size, max_length=max_length, messages=[e.messages for e in examples])
            return [g.text for g in gens]
    finally:
        model.train(was_training)


def is_right(answer: str, gold: str, objective: str) -> bool:
    return answer == gold if objective == "classification" else normalize_answer(answer) == normalize_answer(gold)


def lm_accuracy(model: CausalAdapterModel, slot: str, examples: Sequence[Example], *, max_length: int = 128,
                batch_size: int = 16, precision: str = "auto") -> float:
    """Exact match (generation) or label accuracy (classification) of `slot` on `examples`."""
    if not examples:
        return float("nan")
    answers = predict_answers(model, slot, examples, max_length=max_length, batch_size=batch_size, precision=precision)
    objective = model.formats[slot].objective
    return sum(is_right(a, e.label, objective) for a, e in zip(answers, examples)) / len(examples)


def lm_evaluate(model: CausalAdapterModel, slot: str, examples: Sequence[Example], *, max_length: int = 128,
                batch_size: int = 16, precision: str = "auto") -> dict[str, float]:
    """{"accuracy", "token_accuracy", "perplexity"} of `slot` on `examples` (see the module docstring)."""
    kwargs = dict(max_length=max_length, batch_size=batch_size, precision=precision)
    token_accuracy, perplexity = teacher_forced(model, slot, examples, **kwargs)
    return {"accuracy": lm_accuracy(model, slot, examples, **kwargs), "token_accuracy": token_accuracy,
            "perplexity": perplexity}


def routed_lm_accuracy(model: CausalAdapterModel, examples: Sequence[Example], routed: Sequence[str],
                       available: set[str], **kwargs) -> float:
    """Task-agnostic accuracy: each example answered by the slot its prompt was routed to, judged by the
    answer text (a label of another task, or a generation, must equal the gold text); examples routed to a
    task without a trained slot count as wrong."""
    right = 0
    for slot in sorted(set(routed) & available):
        chosen = [e for e, r in zip(examples, routed) if r == slot]
        answers = predict_answers(model, slot, chosen, **kwargs)
        objective = model.formats[slot].objective
        right += sum(is_right(a, e.label, objective) for a, e in zip(answers, chosen))
    return right / len(examples) if examples else math.nan
