"""Training on examples of several tasks at once (replay, mtl): mixed batches, each example through its OWN head.

Tasks keep their own label spaces, so a batch cannot share one head.  The slots that train together
are tied to one shared adapter (`continual.methods.sequential`), so a mixed batch runs the encoder
once; the pooled vectors are then split by task and each part goes through its own task's head.
The loss is the mean cross-entropy over the batch's examples.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from continual.config import TrainConfig
from continual.data import EncodedDataset
from continual.module import SlotTraining
from continual.trainer import build_trainer, fast_path, total_steps
from modeling.model import AdapterModel
from tasks.loaders import Example


class TaggedDataset(Dataset):
    """Several tasks' encoded examples in one dataset; each item carries its task index."""

    def __init__(self, parts: Sequence[EncodedDataset]):
        self.parts = list(parts)
        self.index = [(t, i) for t, part in enumerate(self.parts) for i in range(len(part))]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, k: int) -> dict:
        t, i = self.index[k]
        return {**self.parts[t][i], "task": t}

    def offsets(self) -> list[int]:
        """Index of each part's first item."""
        out, n = [], 0
        for part in self.parts:
            out.append(n)
            n += len(part)
        return out


def replay_batches(n_current: int, n_buffer: int, batch_size: int, replay_batch_size: int,
                   seed: int) -> list[list[int]]:
    """One epoch of batches over [current examples 0..n_current-1, buffer examples n_current..]:
    each batch holds up to `batch_size` current examples (shuffled) plus `replay_batch_size` buffered ones.

    The buffer is walked in shuffled passes, so every buffered example is replayed about equally often;
    within a batch a buffered example appears at most once (while the buffer is at least that large).
    """
    rng = random.Random(seed)
    current = list(range(n_current))
    rng.shuffle(current)
    take = min(replay_batch_size, n_buffer)
    stream: list[int] = []  # what is left of the current shuffled pass over the buffer
    batches = []
    for start in range(0, n_current, batch_size):
        replayed: list[int] = []
        while len(replayed) < take:
            if not stream:
                stream = list(range(n_current, n_current + n_buffer))
                rng.shuffle(stream)
            i = stream.pop()
            if i in replayed:  # a new pass began mid-batch: keep this one for the next batch
                stream.insert(0, i)
                continue
            replayed.append(i)
        batches.append(current[start:start + batch_size] + replayed)
    return batches


class ReplayBatchSampler:
    """`replay_batches`, drawn afresh (seed + epoch) for every epoch."""

    def __init__(self, n_current: int, n_buffer: int, batch_size: int, replay_batch_size: int, seed: int):
        self.args = (n_current, n_buffer, batch_size, replay_batch_size)
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(self.args[0] / self.args[2])

    def __iter__(self):
        batches = replay_batches(*self.args, seed=self.seed + self.epoch)
        self.epoch += 1
        return iter(batches)


def tagged_loader(dataset: TaggedDataset, tokenizer, batches: ReplayBatchSampler | None, batch_size: int,
                  shuffle: bool, seed: int) -> DataLoader:
    """Padded batches with a `task` tensor; `batches` (a batch sampler) overrides batch_size/shuffle."""
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer, return_tensors="pt")
    if batches is not None:
        return DataLoader(dataset, batch_sampler=batches, collate_fn=collate)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, collate_fn=collate,
                      generator=torch.Generator().manual_seed(seed))


class MultiTaskClassifier(SlotTraining):
    """Trains tied slots on mixed batches: one encoder pass, then each example's own head."""

    def __init__(self, model: AdapterModel, slots: Sequence[str], encode_slot: str, trainable: list[nn.Parameter],
                 config: TrainConfig, total_steps: int, extra_loss=None):
        super().__init__(model, config, total_steps, extra_loss)
        self.slots = list(slots)  # task index in a batch -> slot
        self.encode_slot = encode_slot  # the slot whose (shared) adapter encodes every example
        self.trainable = trainable
        self._hits: dict[int, list[int]] = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.trainable

    def _logits(self, batch: dict) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        batch = dict(batch)
        labels, task = batch.pop("labels"), batch.pop("task")
        pooled = self.model.embed(self.encode_slot, **batch)  # (B, H)
        logits, gold = {}, {}
        for t in task.unique().tolist():
            sel = task == t
            head = self.model.heads[self.slots[t]]
            logits[t] = head(self.model.head_dropout(pooled[sel]))  # (B_t, num_labels of task t)
            gold[t] = labels[sel]
        return logits, gold

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits, gold = self._logits(batch)
        n = sum(len(y) for y in gold.values())
        loss = sum(F.cross_entropy(logits[t].float(), gold[t], reduction="sum") for t in logits) / n
        if self.extra_loss is not None:
            loss = loss + self.extra_loss()
        self.log("train/loss", loss, on_step=True, prog_bar=True, batch_size=n)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._hits = {}

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        logits, gold = self._logits(batch)
        for t in logits:
            hits = self._hits.setdefault(t, [0, 0])
            hits[0] += int((logits[t].argmax(-1) == gold[t]).sum())
            hits[1] += len(gold[t])

    def on_validation_epoch_end(self) -> None:
        # Macro accuracy: the mean of the tasks' dev accuracies (average per task, never per sample).
        accs = [c / max(n, 1) for c, n in self._hits.values()]
        self.log("dev/accuracy", sum(accs) / max(len(accs), 1), prog_bar=True)


def fit_multitask(model: AdapterModel, slots: Sequence[str], encode_slot: str, tokenizer, config: TrainConfig,
                  train: Sequence[Sequence[Example]], dev: Sequence[Sequence[Example]], *,
                  replay_from: int | None = None, replay_batch_size: int = 0, trainable: list[nn.Parameter],
                  logger=None, show_progress: bool = False, extra_loss=None) -> tuple[int, float | None]:
    """Train on `train[t]` through `slots[t]`'s head for every t; returns (steps, best macro dev accuracy).

    `replay_from=k`: tasks k.. are a replay buffer, mixed `replay_batch_size` per batch into batches
    of the tasks before k (whose examples set the number of steps); None: all tasks shuffled together.
    """
    labels = [model.slots[s].labels for s in slots]
    encoded = [EncodedDataset(ex, tokenizer, labels[t], config.max_length) for t, ex in enumerate(train)]
    train_set = TaggedDataset(encoded)
    if replay_from is not None:
        n_current = sum(len(p) for p in encoded[:replay_from])
        batches = ReplayBatchSampler(n_current, len(train_set) - n_current, config.batch_size, replay_batch_size,
                                     config.seed)
        train_loader = tagged_loader(train_set, tokenizer, batches, config.batch_size, False, config.seed)
    else:
        train_loader = tagged_loader(train_set, tokenizer, None, config.batch_size, True, config.seed)
    dev_parts = [EncodedDataset(ex, tokenizer, labels[t], config.max_length) for t, ex in enumerate(dev)]
    dev_loader = (tagged_loader(TaggedDataset(dev_parts), tokenizer, None, config.eval_batch_size, False, 0)
                  if any(len(p) for p in dev_parts) else None)

    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    module = MultiTaskClassifier(model, slots, encode_slot, trainable, config,
                                 total_steps(config, len(train_loader)), extra_loss)
    trainer, keep_best = build_trainer(config, train_batches=len(train_loader), has_dev=dev_loader is not None,
                                       logger=logger, show_progress=show_progress)
    model.train()
    with fast_path(model, config, base_trains=model.slots[encode_slot].kind == "full"):  # as fit_slot
        trainer.fit(module, train_loader, dev_loader)
    model.eval()
    for p in trainable:
        p.requires_grad_(False)
    return trainer.global_step, (keep_best.best if keep_best else None)
