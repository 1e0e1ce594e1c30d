"""Stage 2: train a student from a transfer set (or labelled Parquet), no teacher loaded.

The recipe, top to bottom (`train`):

    0. world      the process (world.py): one process for now; its device
    1. data       open the training stream and the evaluation sources (data.py)
    2. run dir    fingerprint the config; start, resume, or refuse (checkpoint.prepare_run_dir)
    3. model      seed, build the student, optimiser, schedule, (fp16) scaler;
                  restore all of them and the RNGs from a checkpoint when resuming (state.py)
    4. epochs     stream batches -> `train_step`; checkpoint every N steps and at
                  each epoch end; evaluate and log each epoch
    5. outputs    student.pt, student.pt2 (torch.export), config.json, metrics.jsonl

Exact resume: the batch order is a pure function of (seed, epoch) (train/order.py),
the checkpoint stores the position (epoch, batches applied, step) plus every
state that a step reads or changes (weights, optimiser, schedule, scaler, RNGs,
the epoch's running sums), and jitter draws from a generator seeded by the step.
So a run killed at any point and resumed ends bit-identical on CPU.

This module never imports `transferset.teachers`.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from train import checkpoint as ckpt
from train import health
from train.checkpoint import CHECKPOINTS, CONFIG, METRICS
from train.config import TrainConfig
from train.data import TrainingData, open_training_data
from train.export import export_lm_program, export_program, save_state_dict
from train.lm_losses import lm_distillation_loss
from train.losses import distillation_loss
from train.metrics import EpochTable, MetricsLog, evaluate_sources
from train.state import Position, TrainState, build_state
from train.stream import Batch, StreamDataset, StreamSource
from train.students import jitter_images
from train.world import World, refuse_multi_process
from transferset import ownership
from transferset.errors import UserError
from transferset.io import atomic_write_json
from transferset.progress import counted, progress, say

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.out`; returns the last epoch's metrics record.
    The run owns `cfg.out` until it returns (transferset/ownership.py)."""
    cfg.validate()
    with ownership.scope():
        return _train(cfg)


def _train(cfg: TrainConfig) -> dict[str, Any]:
    out = Path(cfg.out)

    # -- 0. the world: one process (DDP is a later step), its device ----------------------
    world = World.detect(cfg.device)
    refuse_multi_process(world)
    if cfg.precision == "fp16" and world.device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (with a gradient scaler); use --precision bf16 or fp32 on CPU")

    # -- 1. data -------------------------------------------------------------------
    data = open_training_data(cfg, world)

    # -- 3 before 2. model, optimiser, schedule: built before the run directory is touched,
    # so that a student that cannot be built leaves nothing that refuses the corrected command
    state = build_state(cfg, num_classes=data.num_classes, input_shape=data.input_shape, total_steps=data.total_steps,
                        warmup_steps=data.warmup_steps, device=world.device, checkpoint=None, per_token=data.per_token)

    # -- 2. run directory: claim it, fingerprint, then start / resume / refuse ------------------
    fingerprint = cfg.fingerprint(data.identity)
    checkpoint = ckpt.prepare_run_dir(cfg, out, fingerprint, data.identity, data.resolved(cfg))
    if checkpoint is not None:  # resuming: weights, optimiser, schedule, RNGs, position
        state.restore(checkpoint)
    if checkpoint is not None and state.pos.epoch >= cfg.epochs:
        say(f"{out} is already trained ({counted(cfg.epochs, 'epoch')}); writing its outputs again", cfg.quiet)
    elif checkpoint is not None:
        pos = state.pos
        say(f"resuming {out} at epoch {pos.epoch + 1}, batch {pos.batch_in_epoch} of {data.steps_per_epoch} (step {pos.step})", cfg.quiet)

    def save() -> None:
        ckpt.save_checkpoint(out / CHECKPOINTS, state.to_checkpoint(fingerprint), keep=cfg.keep_checkpoints, world=world)

    # -- 4. epochs ----------------------------------------------------------------------
    log, table = MetricsLog(out / METRICS, world), EpochTable(cfg.quiet, world=world)
    logged = log.read()
    record: dict[str, Any] = logged[-1] if logged else {}
    while state.pos.epoch < cfg.epochs:
        record = _train_epoch(cfg, data, state, world, save)
        _check_health(record, cfg, log, out)  # a diverged epoch stops here, before its checkpoint
        # The log line first, then the checkpoint: a kill in between resumes from an
        # older checkpoint, which drops this line (keep_until) and logs the epoch again.
        log.append(record)
        table.show(record)
        state.next_epoch()
        save()
    if record.get("health"):
        health.warn(record["health"], record, cfg)

    # -- 5. outputs ---------------------------------------------------------------------
    save_state_dict(state.model, out)
    if data.per_token:
        export_lm_program(state.model, data.example, out)
    else:
        export_program(state.model, data.example, out)
    config_doc = json.loads((out / CONFIG).read_text())
    atomic_write_json(out / CONFIG, {**config_doc, "finished": True, "final": record})
    say(f"student saved to {out}/student.pt and {out}/student.pt2", cfg.quiet)
    return record


def _check_health(record: dict[str, Any], cfg: TrainConfig, log: MetricsLog, out: Path) -> None:
    """Stop a diverged run (train/health.py's rules) with its last record logged and in
    config.json, marked "stopped"; or mark the last epoch's record with its warnings."""
    try:
        flags = health.check_epoch(record, last=record["epoch"] == cfg.epochs, cfg=cfg)
    except UserError as stop:
        record["health"] = ["stopped", "diverged"]
        log.append(record)  # dropped again (keep_until) when a rerun resumes before this epoch
        config_doc = json.loads((out / CONFIG).read_text())
        atomic_write_json(out / CONFIG, {**config_doc, "finished": False, "final": record, "stopped": str(stop)})
        raise
    if flags:
        record["health"] = flags


def _train_epoch(cfg: TrainConfig, data: TrainingData, state: TrainState, world: World, save) -> dict[str, Any]:
    """The rest of epoch `state.pos.epoch`, then its metrics record (train sums + eval).
    `save()` writes a checkpoint of the current state (every --checkpoint-every steps)."""
    pos = state.pos
    started = time.perf_counter()
    rows_left = max(data.source.num_rows - pos.batch_in_epoch * cfg.batch_size, 0)
    with progress(f"epoch {pos.epoch + 1}/{cfg.epochs}", rows_left, cfg.quiet or not world.is_main) as bar:
        for batch in _batches(data.source, cfg, pos, world):
            train_step(state, batch, cfg, data.temperature)
            bar.advance(len(batch))
            if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.batch_in_epoch < data.steps_per_epoch:
                save()
    seconds = time.perf_counter() - started  # a non-finite loss is health.check_epoch's to report, with the record logged
    seen = max(state.sums["rows"], 1)
    class_rows = state.sums["class_rows"].reshape(-1)
    train_labelled = int(class_rows.sum())
    record = {
        "epoch": pos.epoch + 1,
        "step": pos.step,
        "train_loss": float(state.sums["loss"]) / seen,
        "train_soft": float(state.sums["soft"]) / seen,
        "train_hard": float(state.sums["hard"]) / seen,
        "train_baseline": float(state.sums["baseline"]) / seen,  # the loss of all-zero logits (train/health.py)
        "train_accuracy": int(state.sums["correct"]) / train_labelled if train_labelled else None,
        "train_labelled": train_labelled,
        "train_majority": int(class_rows.max()) / train_labelled if train_labelled else None,
        "lr": state.scheduler.get_last_lr()[0],
        "seconds": seconds,
        "rows_per_s": rows_left / seconds if seconds > 0 else None,
    }
    record.update(evaluate_sources(state.model, data.eval_sources, batch_size=cfg.eval_batch_size, num_classes=data.num_classes, world=world))
    return record


def train_step(state: TrainState, batch: Batch, cfg: TrainConfig, temperature: float) -> None:
    """One optimiser step on `batch` (already on the device): forward, loss, backward,
    clip, step, schedule; then add to the epoch's running sums and advance the position."""
    model, optimizer, scaler = state.model, state.optimizer, state.scaler
    x = batch.inputs  # [B, *input_shape]
    if cfg.jitter:
        x = jitter_images(x, cfg.jitter, _step_generator(cfg.seed, state.pos.step))
    autocast_dtype = AUTOCAST_DTYPES.get(cfg.precision)
    with torch.autocast(state.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
        logits = model(batch.input_ids, batch.attention_mask) if batch.tokens else model(x)  # [B, C] ([B, L, V]); losses cast to float32
    if batch.tokens:
        loss, parts = lm_distillation_loss(logits, batch.targets, batch.inputs, alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss)
    else:
        loss, parts = distillation_loss(logits, batch.targets, batch.labels, alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss)
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
    # so a resumed epoch adds the same numbers in the same order.
    rows = batch.labels.shape[0]
    state.sums["loss"] += loss.detach().double() * rows
    state.sums["soft"] += parts["soft"].double() * rows
    state.sums["hard"] += parts["hard"].double() * rows
    state.sums["rows"] += rows
    _add_health_sums(state.sums, logits.detach(), batch, cfg, temperature)
    state.pos.batch_in_epoch += 1
    state.pos.step += 1


def _add_health_sums(sums: dict[str, Any], logits: torch.Tensor, batch: Batch, cfg: TrainConfig, temperature: float) -> None:
    """What train/health.py compares the epoch with: the loss all-zero logits would
    score on this batch, and the argmax hits and class counts on its labelled rows.
    Device tensors only, no host sync; one extra loss on [B, C] zeros per step.
    Token rows: the baseline only (their rows carry no class labels)."""
    with torch.no_grad():
        if batch.tokens:
            constant, _ = lm_distillation_loss(torch.zeros_like(logits, dtype=torch.float32), batch.targets, batch.inputs,
                                               alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss)
            sums["baseline"] += constant.double() * batch.labels.shape[0]
            return
        constant, _ = distillation_loss(torch.zeros_like(logits, dtype=torch.float32), batch.targets, batch.labels,
                                        alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss)
        sums["baseline"] += constant.double() * batch.labels.shape[0]
        labelled = batch.labels >= 0
        y = batch.labels[labelled]  # [L]
        sums["correct"] += (logits[labelled].argmax(dim=-1) == y).sum()
        sums["class_rows"] = sums["class_rows"] + torch.bincount(y, minlength=logits.shape[1])  # [C]


def _batches(source: StreamSource, cfg: TrainConfig, pos: Position, world: World) -> Iterator[Batch]:
    """This process's batches of `pos.epoch` not applied yet, on its device (pinned +
    non_blocking on CUDA)."""
    device = world.device
    cuda = device.type == "cuda"
    if cfg.workers:
        dataset = StreamDataset(source, batch_size=cfg.batch_size, seed=cfg.seed, epoch=pos.epoch, start_batch=pos.batch_in_epoch, world=world)
        # The loader draws its base seed from this generator, not from the global RNG
        # (which checkpoints restore): a mid-epoch resume must not shift dropout's draws.
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=cfg.workers, pin_memory=cuda, generator=torch.Generator().manual_seed(cfg.seed)
        )
        batches = iter(loader)
    else:
        batches = source.epoch(batch_size=cfg.batch_size, seed=cfg.seed, epoch=pos.epoch, start_batch=pos.batch_in_epoch, world=world)
    for batch in batches:
        if cuda and not cfg.workers:
            batch = batch.pin_memory()
        yield batch.to(device, non_blocking=cuda)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Jitter's own generator, a function of (seed, step): the same shifts after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF_FFFF)
