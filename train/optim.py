"""Optimiser and learning-rate schedule: linear warm-up, then cosine decay.

    lr(step) = lr * (step + 1) / warmup                        step < warmup
             = lr * (m + (1 - m) * (1 + cos(pi * progress)) / 2)  after, where
               progress = (step - warmup) / (total - warmup) in [0, 1]
                 and m = --min-lr-ratio

The schedule is a plain function of the step, held by a `LambdaLR`, so its
state dict is a handful of numbers (checkpoints load with weights_only=True).
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("sgd", "adamw")
DEFAULT_LR = {"sgd": 0.05, "adamw": 1e-3}
DEFAULT_WEIGHT_DECAY = {"sgd": 0.0, "adamw": 0.01}


def build_optimizer(
    model: torch.nn.Module,
    name: str,
    *,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
) -> torch.optim.Optimizer:
    """SGD with momentum, or AdamW, over every trainable parameter (biases included)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}")  # config.py validated the name


def warmup_cosine(step: int, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0) -> float:
    """The multiplier of the base learning rate before optimiser step `step` (0-based)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / decay_steps, 1.0)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_steps: int, min_lr_ratio: float = 0.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per optimiser step."""

    def multiplier(step: int) -> float:
        return warmup_cosine(step, total_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)


def resolve_warmup(total_steps: int, warmup_steps: int | None, warmup_fraction: float | None) -> int:
    """--warmup-steps N, or --warmup-fraction F of all steps (rounded), or none."""
    if warmup_steps is not None:
        return min(warmup_steps, total_steps)
    if warmup_fraction is not None:
        return min(round(warmup_fraction * total_steps), total_steps)
    return 0
