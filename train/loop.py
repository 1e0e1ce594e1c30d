"""Stage 2: train a student from a transfer set (or labelled Parquet), no teacher loaded.

The recipe, top to bottom (`train`):

    0. world      the process (world.py) and, under torchrun, the process group
                  (distributed.py); its device
    1. data       open the training stream and the evaluation sources (data.py)
    2. run dir    fingerprint the config; start, resume, or refuse (checkpoint.prepare_run_dir)
    3. model      seed, build the student, optimiser, schedule, (fp16) scaler;
                  restore all of them and the RNGs from a checkpoint when resuming (state.py)
    4. epochs     stream batches -> `train_step` (step.py); checkpoint every N steps and at
                  each epoch end; evaluate and log each epoch
    5. outputs    student.pt, student.pt2 (torch.export), config.json, metrics.jsonl

Exact resume: the batch order is a pure function of (seed, epoch) (train/order.py),
the checkpoint stores the position (epoch, batches applied, step) plus every
state that a step reads or changes (weights, optimiser, schedule, scaler, RNGs,
the epoch's running sums), and jitter draws from a generator seeded by the step.
So a run killed at any point and resumed ends bit-identical on CPU.

Several processes (torchrun): `--batch-size` is the global batch; each rank trains
on its slice of it through DDP (distributed.py says what each rank does), only
rank 0 writes the run directory, and the position is counted in global batches, so
a checkpoint resumes on any number of processes with the same global batch.

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
from train import distributed, health, order
from train.checkpoint import CHECKPOINTS, CONFIG, METRICS
from train.config import TrainConfig
from train.data import TrainingData, open_training_data
from train.export import export_lm_program, export_program, save_state_dict
from train.metrics import EpochTable, MetricsLog, evaluate_sources
from train.state import Position, TrainState, build_state, zero_sums
from train.step import train_step
from train.batch import Batch
from train.stream import StreamSource
from train.workers import StreamDataset
from train.world import World
from transferset import ownership
from transferset.errors import UserError
from transferset.io import atomic_write_json
from transferset.progress import counted, progress, say

def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.out`; returns the last epoch's metrics record.
    The run owns `cfg.out` until it returns (transferset/ownership.py)."""
    cfg.validate()
    world = World.detect(cfg.device)
    if cfg.precision == "fp16" and world.device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (with a gradient scaler); use --precision bf16 or fp32 on CPU")
    if cfg.batch_size % world.world_size and cfg.tokens_per_batch is None:
        raise UserError(f"--batch-size {cfg.batch_size} is the global batch and must be divisible by the {world.world_size} processes; "
                        f"use a multiple of {world.world_size}")
    distributed.start(world)
    with ownership.scope():
        record = _train(cfg, world)
    distributed.finish(world)  # every rank waits for rank 0's outputs, then leaves the group
    return record


def _train(cfg: TrainConfig, world: World) -> dict[str, Any]:
    out = Path(cfg.out)

    # -- 1. data -------------------------------------------------------------------
    data = open_training_data(cfg, world)

    # -- 3 before 2. model, optimiser, schedule: built before the run directory is touched,
    # so that a student that cannot be built leaves nothing that refuses the corrected command
    state = build_state(cfg, num_classes=data.num_classes, input_shape=data.input_shape, total_steps=data.total_steps,
                        warmup_steps=data.warmup_steps, device=world.device, checkpoint=None, per_token=data.per_token)
    _refuse_single_row_batch_norm(state.model, data.source, cfg.batch_size, world)

    # -- 2. run directory (rank 0 only): claim it, fingerprint, then start / resume / refuse --------
    fingerprint = cfg.fingerprint(data.identity)
    checkpoint = ckpt.prepare_run_dir(cfg, out, fingerprint, data.identity, data.resolved(cfg)) if world.is_main else None
    checkpoint = distributed.broadcast(checkpoint, world)
    if checkpoint is not None:  # resuming: weights, optimiser, schedule, RNGs, position
        state.restore(checkpoint)
        if not world.is_main:  # the checkpoint's sums are already the sum over ranks: count them once, on rank 0
            state.sums = zero_sums(world.device)
    quiet = cfg.quiet or not world.is_main
    if checkpoint is not None and state.pos.epoch >= cfg.epochs:
        say(f"{out} is already trained ({counted(cfg.epochs, 'epoch')}); writing its outputs again", quiet)
    elif checkpoint is not None:
        pos = state.pos
        say(f"resuming {out} at epoch {pos.epoch + 1}, batch {pos.batch_in_epoch} of {data.steps_per_epoch} (step {pos.step})", quiet)
    state.wrapped = distributed.wrap(state.model, world)

    def save() -> None:  # every rank calls it (the sums are summed over ranks); rank 0 writes
        state.sums = distributed.sum_to_main(state.sums, world, data.num_classes)
        if world.is_main:
            ckpt.save_checkpoint(out / CHECKPOINTS, state.to_checkpoint(fingerprint), keep=cfg.keep_checkpoints, world=world)

    # -- 4. epochs ----------------------------------------------------------------------
    log, table = MetricsLog(out / METRICS, world), EpochTable(cfg.quiet, world=world)
    logged = log.read()
    record: dict[str, Any] = logged[-1] if logged else {}
    while state.pos.epoch < cfg.epochs:
        record = _train_epoch(cfg, data, state, world, save)
        _check_health(record, cfg, log, out, world)  # a diverged epoch stops here, before its checkpoint
        # The log line first, then the checkpoint: a kill in between resumes from an
        # older checkpoint, which drops this line (keep_until) and logs the epoch again.
        log.append(record)
        table.show(record)
        state.next_epoch()
        save()
    if record.get("health") and world.is_main:
        health.warn(record["health"], record, cfg)

    # -- 5. outputs (rank 0) ------------------------------------------------------------
    if not world.is_main:
        return record
    save_state_dict(state.model, out)
    if data.per_token:
        export_lm_program(state.model, data.example, out)
    else:
        export_program(state.model, data.example, out)
    config_doc = json.loads((out / CONFIG).read_text())
    atomic_write_json(out / CONFIG, {**config_doc, "finished": True, "final": record})
    say(f"student saved to {out}/student.pt and {out}/student.pt2", cfg.quiet)
    return record


def _refuse_single_row_batch_norm(model: torch.nn.Module, source: StreamSource, batch_size: int, world: World) -> None:
    """A student with BatchNorm cannot train on a batch of one row (one value per channel
    where the spatial size is 1): refuse the batch size that gives one, before any step."""
    if not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        return
    part = order.rank_part(source.num_rows, batch_size, world.world_size, 0, drop_last=False)
    last = part.global_bounds(part.num_batches - 1)
    if (last[1] - last[0]) // world.world_size == 1:
        better = next((b for b in range(batch_size + world.world_size, 2 * batch_size + 2 * world.world_size, world.world_size)
                       if source.num_rows % b == 0 or source.num_rows % b >= 2 * world.world_size), None)
        raise UserError(f"the student has BatchNorm, which cannot train on a batch of 1 row, and --batch-size {batch_size} leaves "
                        f"{counted(last[1] - last[0], 'row')} in the last batch of each epoch "
                        f"({counted(source.num_rows, 'row')}{f' over {world.world_size} processes' if world.world_size > 1 else ''}); "
                        f"use {f'--batch-size {better}' if better else 'another --batch-size'}")


def _check_health(record: dict[str, Any], cfg: TrainConfig, log: MetricsLog, out: Path, world: World) -> None:
    """Stop a diverged run (train/health.py's rules) with its last record logged and in
    config.json, marked "stopped"; or mark the last epoch's record with its warnings.
    Every rank decides on rank 0's record (the same decision); rank 0 writes."""
    try:
        flags = health.check_epoch(record, last=record["epoch"] == cfg.epochs, cfg=cfg)
    except UserError as stop:
        record["health"] = ["stopped", "diverged"]
        if world.is_main:
            log.append(record)  # dropped again (keep_until) when a rerun resumes before this epoch
            config_doc = json.loads((out / CONFIG).read_text())
            atomic_write_json(out / CONFIG, {**config_doc, "finished": False, "final": record, "stopped": str(stop)})
        distributed.barrier(world)  # no rank exits (and so has torchrun stop rank 0) before rank 0 has written
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
        # closing(): a step that raises stops a views set's producer thread here, not when the
        # traceback is freed (transferset/prefetch.py), before the health-stop writes and barrier
        with contextlib.closing(_batches(data.source, cfg, pos, world)) as batches:
            for batch in batches:
                train_step(state, batch, cfg, data.temperature, world)
                bar.advance(batch.global_rows or len(batch))
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.batch_in_epoch < data.steps_per_epoch:
                    save()
    state.sums = distributed.sum_to_main(state.sums, world, data.num_classes)
    if world.is_main:
        record = _epoch_record(cfg, data, state, rows_left, time.perf_counter() - started)
        record.update(evaluate_sources(state.model, data.eval_sources, batch_size=cfg.eval_batch_size, num_classes=data.num_classes, world=world))
    return distributed.broadcast(record if world.is_main else None, world)


def _epoch_record(cfg: TrainConfig, data: TrainingData, state: TrainState, rows_left: int, seconds: float) -> dict[str, Any]:
    """The epoch's metrics from its running sums (a non-finite loss is health.check_epoch's
    to report, with the record logged)."""
    pos = state.pos
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
    return record


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
