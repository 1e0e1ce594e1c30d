"""One optimiser step (`train_step`): forward, the loss, backward, the optimiser; and
the epoch's running sums that metrics and train/health.py read.

Under torchrun the step sees this rank's slice of the global batch: each loss term is
weighted so that DDP's gradient average is the gradient of the whole global batch
(`_term_weights`, distributed.mean_weight), and the sums add this rank's share, so that
their sum over ranks is what one process adds. Dropout and --jitter draw from
(seed, step, rank) on several processes; one process keeps the checkpointed RNG stream,
so its resume stays bit-identical.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch

from train import distributed
from train.config import TrainConfig
from train.lm_losses import lm_distillation_loss, target_positions
from train.losses import distillation_loss
from train.state import TrainState
from train.batch import Batch
from train.students import jitter_images
from train.world import World

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train_step(state: TrainState, batch: Batch, cfg: TrainConfig, temperature: float, world: World) -> None:
    """One optimiser step on `batch` (already on the device; this rank's slice of the
    global batch): forward, loss, backward, clip, step, schedule; then add to the
    epoch's running sums and advance the position."""
    model, optimizer, scaler = state.wrapped or state.model, state.optimizer, state.scaler
    if world.world_size > 1:
        # Each rank its own dropout draws (one seed would give every rank's rows the same
        # masks), a function of (seed, step, rank) so that a resume on as many ranks draws
        # them again. One process keeps the checkpointed RNG stream (bit-identical resume).
        torch.manual_seed(_mix(cfg.seed, state.pos.step, world.rank))
    x = batch.inputs  # [B, *input_shape]
    if cfg.jitter:
        x = jitter_images(x, cfg.jitter, _step_generator(cfg.seed, state.pos.step, world.rank))
    autocast_dtype = AUTOCAST_DTYPES.get(cfg.precision)
    with torch.autocast(state.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
        logits = model(batch.input_ids, batch.attention_mask) if batch.tokens else model(x)  # [B, C] ([B, L, V]); losses cast to float32
    w_soft, w_hard = _term_weights(batch, cfg, world)  # 1 on one process: DDP's average = the global batch's gradient
    if batch.tokens:
        loss, parts = lm_distillation_loss(logits, batch.targets, batch.inputs, alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss)
        loss = loss * w_soft
    else:
        loss, parts = distillation_loss(logits, batch.targets, batch.labels, alpha=cfg.resolved_alpha, temperature=temperature,
                                        kind=cfg.loss, term_weights=(w_soft, w_hard))
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
    else:
        loss.backward()
    if cfg.grad_clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    state.scheduler.step()
    # Running sums in float64 on the device (no host sync per step); checkpointed,
    # so a resumed epoch adds the same numbers in the same order. A DDP rank adds its
    # weighted share of the global batch's means, so that the sum over ranks is what
    # one process adds for the whole global batch.
    rows = batch.labels.shape[0]
    share = rows if world.world_size == 1 else batch.global_rows / world.world_size
    state.sums["loss"] += loss.detach().double() * share
    state.sums["soft"] += (parts["soft"] * w_soft).double() * share
    state.sums["hard"] += (parts["hard"] * w_hard).double() * share
    state.sums["rows"] += rows
    _add_health_sums(state.sums, logits.detach(), batch, cfg, temperature, (w_soft, w_hard), share)
    state.pos.batch_in_epoch += 1
    state.pos.step += 1


def _term_weights(batch: Batch, cfg: TrainConfig, world: World) -> tuple:
    """(w_soft, w_hard) for this rank's slice (distributed.mean_weight): the soft term is a
    mean over rows, the hard one over labelled rows; token rows: both over target positions."""
    if world.world_size == 1:
        return 1.0, 1.0
    if batch.tokens:
        weight = distributed.mean_weight(target_positions(batch.inputs).sum(), world)
        return weight, weight
    w_soft = distributed.mean_weight(len(batch), world, batch.global_rows)
    uses_hard = batch.targets is None or cfg.resolved_alpha < 1
    w_hard = distributed.mean_weight((batch.labels >= 0).sum(), world) if uses_hard else 1.0
    return w_soft, w_hard


def _add_health_sums(sums: dict[str, Any], logits: torch.Tensor, batch: Batch, cfg: TrainConfig, temperature: float,
                     term_weights: tuple, share: float) -> None:
    """What train/health.py compares the epoch with: the loss all-zero logits would
    score on this batch, and the argmax hits and class counts on its labelled rows.
    Device tensors only, no host sync; one extra loss on [B, C] zeros per step.
    Token rows: the baseline only (their rows carry no class labels). `term_weights` and
    `share`: this rank's part of the global batch, as for the loss (train_step)."""
    with torch.no_grad():
        if batch.tokens:
            constant, _ = lm_distillation_loss(torch.zeros_like(logits, dtype=torch.float32), batch.targets, batch.inputs,
                                               alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss)
            sums["baseline"] += (constant * term_weights[0]).double() * share
            return
        constant, _ = distillation_loss(torch.zeros_like(logits, dtype=torch.float32), batch.targets, batch.labels,
                                        alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss, term_weights=term_weights)
        sums["baseline"] += constant.double() * share
        labelled = batch.labels >= 0
        y = batch.labels[labelled]  # [L]
        sums["correct"] += (logits[labelled].argmax(dim=-1) == y).sum()
        sums["class_rows"] = sums["class_rows"] + torch.bincount(y, minlength=logits.shape[1])  # [C]


def _step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """Jitter's own generator, a function of (seed, step[, rank]): the same shifts after a resume."""
    return torch.Generator().manual_seed(_mix(seed, step, rank))


def _mix(seed: int, step: int, rank: int) -> int:
    """A 63-bit seed from (seed, step, rank); rank 0 gives what one process always used."""
    return (seed * 1_000_003 + step + rank * 0x9E37_79B9_7F4A_7C15) & 0x7FFF_FFFF_FFFF_FFFF
