"""Step 3 of the training recipe: everything a training step reads or changes.

`TrainState` holds the student, optimiser, schedule, (fp16) gradient scaler, the
position (epoch, batches applied, step) and the epoch's running sums. It is
built fresh (`build_state`, seeded) or restored from a checkpoint, and turned back
into one (`to_checkpoint`): together with the RNG states that is what an exact
resume needs (checkpoint.py describes the file).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from train import checkpoint as ckpt
from train.config import TrainConfig
from train.optim import build_optimizer, build_scheduler
from train.lm_students import build_lm_student
from train.students import build_student
from transferset.errors import UserError


@dataclass
class Position:
    """Where training stands: `batch_in_epoch` batches of `epoch` have been applied."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    device: torch.device
    pos: Position
    sums: dict[str, Any]  # the epoch's running sums (zero_sums)
    wrapped: torch.nn.Module | None = None  # what training steps call: DDP around `model` on several processes

    def restore(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint's states, RNGs included (checkpoint.load_checkpoint's dict)."""
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        if self.scaler is not None and checkpoint["scaler"] is not None:
            self.scaler.load_state_dict(checkpoint["scaler"])
        ckpt.set_rng_state(checkpoint["rng"])
        self.pos = Position(**checkpoint["position"])
        restored = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in checkpoint["epoch_sums"].items()}
        self.sums = {**zero_sums(self.device), **restored}  # a checkpoint from before the health sums: those start at 0

    def to_checkpoint(self, fingerprint: str) -> dict[str, Any]:
        """What `checkpoint.save_checkpoint` writes; refuses a diverged loss first."""
        check_finite(self.sums, self.pos)
        return {
            "fingerprint": fingerprint,
            "position": vars(self.pos).copy(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": ckpt.rng_state(),
            "epoch_sums": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in self.sums.items()},
        }

    def next_epoch(self) -> None:
        """Position at the start of the next epoch, with fresh running sums."""
        self.pos = Position(self.pos.epoch + 1, 0, self.pos.step)
        self.sums = zero_sums(self.device)


def build_state(cfg: TrainConfig, *, num_classes: int, input_shape: tuple[int, ...], total_steps: int, warmup_steps: int,
                device: torch.device, checkpoint: dict[str, Any] | None, per_token: bool = False) -> TrainState:
    """Seed, build the student, optimiser, schedule and scaler; restore them (and the
    RNGs) from `checkpoint` when resuming. The model is left in train mode. `per_token`:
    a causal LM over num_classes tokens and input_shape[0] positions (train/lm_students.py)."""
    seed_everything(cfg.seed)
    if per_token:
        model = build_lm_student(cfg.student, cfg.student_args, num_classes, input_shape[0]).to(device)
    else:
        model = build_student(cfg.student, cfg.student_args, num_classes, input_shape).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.resolved_lr, momentum=cfg.momentum, weight_decay=cfg.resolved_weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    state = TrainState(model, optimizer, scheduler, scaler, device, Position(), zero_sums(device))
    if checkpoint is not None:
        state.restore(checkpoint)
    model.train()
    return state


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def zero_sums(device: torch.device) -> dict[str, Any]:
    """The epoch's running sums: loss parts x rows (float64 scalars), and rows; for
    train/health.py the loss of all-zero logits x rows ("baseline"), and on labelled
    rows the correct argmaxes and the count per class (int64; "class_rows" grows
    to [C] at the first labelled batch)."""
    zero = torch.zeros((), dtype=torch.float64, device=device)
    count = torch.zeros((), dtype=torch.int64, device=device)
    return {"loss": zero.clone(), "soft": zero.clone(), "hard": zero.clone(), "baseline": zero.clone(),
            "correct": count.clone(), "class_rows": count.clone(), "rows": 0}


def check_finite(sums: dict[str, Any], pos: Position) -> None:
    loss = float(sums["loss"])
    if not math.isfinite(loss):
        raise UserError(f"training diverged: the loss is {loss} in epoch {pos.epoch + 1} (step {pos.step}); "
                        f"try a lower --lr, a smaller --grad-clip or a longer --warmup-fraction, and rerun with --overwrite")
