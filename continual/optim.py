"""Optimizers (AdamW, Adam, SGD, Lion), parameter groups (weight decay, layer-wise LR) and warm-up + decay
schedules, from well-kept libraries (torch, lion-pytorch, transformers)."""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

from continual.config import TrainConfig


def decays(name: str, p: torch.nn.Parameter) -> bool:
    """Weight decay applies to weight matrices only: never to biases, norm weights or other vectors."""
    return p.ndim >= 2 and "norm" not in name.lower()


def param_groups(named: Iterable[tuple[str, torch.nn.Parameter]], lr: float, weight_decay: float,
                 layer_of: dict[int, int] | None = None, num_layers: int = 0,
                 layer_lr_decay: float = 1.0, lr_scale_of: dict[int, float] | None = None) -> list[dict]:
    """Optimizer groups: weights decay, biases and norms don't (standard transformer practice).

    With `layer_of` (id(param) -> encoder layer index, see `layer_index`) and `layer_lr_decay` < 1,
    a parameter in layer i trains at lr * layer_lr_decay ** (num_layers - 1 - i): the top layer at the
    full LR, each layer below it one factor lower (Clark et al. 2020, ELECTRA).  Parameters outside
    the layers (heads, embeddings-level prompts, adapter modules kept beside the encoder) keep lr.
    `lr_scale_of` (id(param) -> factor, from the adapter kind: e.g. a task embedding's few numbers) multiplies
    those parameters' LR on top.  Each group carries a `name` ("layer3/decay", "other/no_decay",
    "other/no_decay/x10") for per-group diagnostics.
    """
    lr_scale_of = lr_scale_of or {}
    buckets: dict[tuple[int | None, bool, float], list] = {}
    for name, p in named:
        layer = layer_of.get(id(p)) if layer_of and layer_lr_decay != 1.0 else None
        buckets.setdefault((layer, decays(name, p), lr_scale_of.get(id(p), 1.0)), []).append(p)
    groups = []
    # Stable order, full-LR groups first (progressive unfreezing reads the base LR from group 0): the rest
    # (heads, ...), then layers top-down; decaying weights before the others in each.
    order = sorted(buckets, key=lambda key: (key[0] is not None, -(key[0] or 0), not key[1], key[2] != 1.0))
    for layer, decay, factor in order:
        params = buckets[(layer, decay, factor)]
        scale = factor * (1.0 if layer is None else layer_lr_decay ** (num_layers - 1 - layer))
        name = f"{'other' if layer is None else f'layer{layer}'}/{'decay' if decay else 'no_decay'}"
        groups.append({"params": params, "weight_decay": weight_decay if decay else 0.0, "lr": lr * scale,
                       "name": name + (f"/x{factor:g}" if factor != 1.0 else "")})
    return groups


def layer_index(encoder: nn.Module) -> tuple[dict[int, int], int]:
    """(id(param) -> index of the transformer layer it lives in, number of layers): adapter weights injected
    into layer i (peft LoRA) and the layer's own base weights alike."""
    from continual.unfreeze import encoder_layers

    layers = encoder_layers(encoder)
    return {id(p): i for i, layer in enumerate(layers) for p in layer.parameters()}, len(layers)


def build_optimizer(groups: list[dict], config: TrainConfig) -> torch.optim.Optimizer:
    """`weight_decay` is decoupled (p <- p - lr*wd*p, Loshchilov & Hutter 2019) for adamw and lion; adam and
    sgd keep their original L2 penalty (that difference is why one would pick adam over adamw)."""
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.learning_rate)
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.learning_rate)
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
