"""Optimizers (AdamW, Lion, SGD) and warm-up + decay schedules, from well-kept libraries."""
from __future__ import annotations

from typing import Iterable

import torch

from continual.config import TrainConfig


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float) -> list[dict]:
    """Two groups: weights decay, biases and norms don't (standard transformer practice)."""
    decay, no_decay = [], []
    for name, p in named:
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay, "lr": lr}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lr": lr})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate)
    if config.optimizer == "lion":
        from lion_pytorch import Lion  # Chen et al. 2023; lucidrains' reference implementation

        return Lion(groups, lr=config.learning_rate)
    return torch.optim.SGD(groups, lr=config.learning_rate, momentum=0.9)


def warmup_steps(config: TrainConfig, total_steps: int) -> int:
    return config.warmup_steps if config.warmup_steps >= 0 else int(0.06 * total_steps)


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, total_steps: int):
    """transformers' LambdaLR schedules: linear warm-up, then constant, linear or cosine decay."""
    from transformers import get_scheduler

    name = {"constant": "constant_with_warmup", "linear": "linear", "cosine": "cosine"}[config.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps(config, total_steps),
                         num_training_steps=max(total_steps, 1))
