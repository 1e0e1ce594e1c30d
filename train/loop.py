"""Stage 2: train a student from a transfer set (or labelled Parquet), no teacher loaded.

The recipe, top to bottom (`train`):

    1. data       open the training stream and the evaluation sources
    2. run dir    fingerprint the config; start, resume, or refuse (checkpoint.prepare_run_dir)
    3. model      seed, build the student, optimiser, schedule, (fp16) scaler;
                  restore all of them and the RNGs from a checkpoint when resuming
    4. epochs     stream batches -> loss -> step; checkpoint every N steps and at
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
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from train import checkpoint as ckpt
from train.checkpoint import CHECKPOINTS, CONFIG, METRICS
from train.config import TrainConfig
from train.export import export_program, save_state_dict
from train.losses import distillation_loss
from train.metrics import EpochTable, MetricsLog, evaluate_sources
from train.optim import build_optimizer, build_scheduler, resolve_warmup
from train.stream import StreamDataset, StreamSource, parquet_files
from train.students import build_student, jitter_images
from transferset.devices import resolve_device
from transferset.errors import UserError
from transferset.inputs import InputSpec
from transferset.manifest import MANIFEST, atomic_write_json, read_manifest
from transferset.progress import progress, say

AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Position:
    """Where training stands: `batch_in_epoch` batches of `epoch` have been applied."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run in `cfg.out`; returns the last epoch's metrics record."""
    cfg.validate()
    out = Path(cfg.out)

    # -- 1. data -------------------------------------------------------------------
    source = _open_training_data(cfg)
    cfg.check_data(
        has_targets=source.has_targets, num_labelled=source.num_labelled, combine=source.combine, stored_temperature=source.temperature
    )
    num_classes = source.num_classes
    temperature = cfg.effective_temperature(source.temperature)
    eval_sources = {path: open_eval_data(path, source.input_spec, cfg.eval_label_column, num_classes) for path in cfg.eval}
    steps_per_epoch = source.num_batches(cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    warmup_steps = resolve_warmup(total_steps, cfg.warmup_steps, cfg.warmup_fraction)

    # -- 2. run directory: fingerprint, then start / resume / refuse ------------------
    identity = _data_identity(cfg, source)
    fingerprint = cfg.fingerprint(identity)
    device = _resolve_device(cfg)
    example = _example_inputs(source, cfg.seed)  # [2, *input_shape], for the output check and torch.export
    input_shape = tuple(example.shape[1:])
    if cfg.jitter and len(input_shape) not in (2, 3):
        raise UserError(f"--jitter shifts images, but these inputs have shape {input_shape}; use image inputs (C,H,W or H,W) or drop --jitter")
    resolved = {
        "input": source.input_spec.to_dict(),
        "input_shape": list(input_shape),
        "num_classes": num_classes,
        "class_names": (source.provenance or {}).get("class_names"),
        "label_column": cfg.eval_label_column if cfg.transfer else cfg.label_column,
        "temperature": temperature,
        "stored_temperature": source.temperature,
        "combine": source.combine,
        "alpha": cfg.resolved_alpha,
        "lr": cfg.resolved_lr,
        "weight_decay": cfg.resolved_weight_decay,
        "rows": source.num_rows,
        "labelled_rows": source.num_labelled,
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total_steps,
        "warmup_steps": warmup_steps,
    }
    state = ckpt.prepare_run_dir(cfg, out, fingerprint, identity, resolved)

    # -- 3. model, optimiser, schedule (restored when resuming) ---------------------------
    _seed_everything(cfg.seed)
    model = build_student(cfg.student, cfg.student_args, num_classes, input_shape).to(device)
    optimizer = build_optimizer(model, cfg.optimizer, lr=cfg.resolved_lr, momentum=cfg.momentum, weight_decay=cfg.resolved_weight_decay)
    scheduler = build_scheduler(optimizer, total_steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=cfg.min_lr_ratio)
    scaler = torch.amp.GradScaler("cuda") if cfg.precision == "fp16" else None
    autocast_dtype = AUTOCAST_DTYPES.get(cfg.precision)
    pos = Position()
    sums = _zero_sums(device)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state["scaler"] is not None:
            scaler.load_state_dict(state["scaler"])
        ckpt.set_rng_state(state["rng"])
        pos = Position(**state["position"])
        sums = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in state["epoch_sums"].items()}
        if pos.epoch >= cfg.epochs:
            say(f"{out} is already trained ({cfg.epochs} epochs); writing its outputs again", cfg.quiet)
        else:
            say(f"resuming {out} at epoch {pos.epoch + 1}, batch {pos.batch_in_epoch} of {steps_per_epoch} (step {pos.step})", cfg.quiet)
    model.train()

    def save(position: Position) -> None:
        _check_finite(sums, position)
        ckpt.save_checkpoint(
            out / CHECKPOINTS,
            {
                "fingerprint": fingerprint,
                "position": vars(position).copy(),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": ckpt.rng_state(),
                "epoch_sums": {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in sums.items()},
            },
            keep=cfg.keep_checkpoints,
        )

    # -- 4. epochs ----------------------------------------------------------------------
    log, table = MetricsLog(out / METRICS), EpochTable(cfg.quiet)
    logged = log.read()
    record: dict[str, Any] = logged[-1] if logged else {}
    while pos.epoch < cfg.epochs:
        started = time.perf_counter()
        rows_left = _rows_in_batches(source.num_rows, cfg.batch_size, pos.batch_in_epoch)
        with progress(f"epoch {pos.epoch + 1}/{cfg.epochs}", rows_left, cfg.quiet) as bar:
            for batch in _batches(source, cfg, pos, device):
                x = batch.inputs
                if cfg.jitter:
                    x = jitter_images(x, cfg.jitter, _step_generator(cfg.seed, pos.step))
                with torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext():
                    logits = model(x)  # [B, C]; the losses cast to float32
                loss, parts = distillation_loss(
                    logits, batch.target_logits, batch.labels, alpha=cfg.resolved_alpha, temperature=temperature, kind=cfg.loss
                )
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
                scheduler.step()
                # Running sums in float64 on the device (no host sync per step); checkpointed,
                # so a resumed epoch adds the same numbers in the same order.
                rows = batch.labels.shape[0]
                sums["loss"] += loss.detach().double() * rows
                sums["soft"] += parts["soft"].double() * rows
                sums["hard"] += parts["hard"].double() * rows
                sums["rows"] += rows
                pos.batch_in_epoch += 1
                pos.step += 1
                bar.advance(rows)
                if cfg.checkpoint_every and pos.step % cfg.checkpoint_every == 0 and pos.batch_in_epoch < steps_per_epoch:
                    save(pos)
        seconds = time.perf_counter() - started
        _check_finite(sums, pos)
        seen = max(sums["rows"], 1)
        record = {
            "epoch": pos.epoch + 1,
            "step": pos.step,
            "train_loss": float(sums["loss"]) / seen,
            "train_soft": float(sums["soft"]) / seen,
            "train_hard": float(sums["hard"]) / seen,
            "lr": scheduler.get_last_lr()[0],
            "seconds": seconds,
            "rows_per_s": rows_left / seconds if seconds > 0 else None,
        }
        record.update(evaluate_sources(model, eval_sources, batch_size=cfg.eval_batch_size, num_classes=num_classes, device=device))
        # The log line first, then the checkpoint: a kill in between resumes from an
        # older checkpoint, which drops this line (keep_until) and logs the epoch again.
        log.append(record)
        table.show(record)
        pos, sums = Position(pos.epoch + 1, 0, pos.step), _zero_sums(device)
        save(pos)

    # -- 5. outputs ---------------------------------------------------------------------
    save_state_dict(model, out)
    export_program(model, example, out)
    config_doc = json.loads((out / CONFIG).read_text())
    atomic_write_json(out / CONFIG, {**config_doc, "finished": True, "final": record})
    say(f"student saved to {out}/student.pt and {out}/student.pt2", cfg.quiet)
    return record


# -- data ---------------------------------------------------------------------------------


def _open_training_data(cfg: TrainConfig) -> StreamSource:
    if cfg.transfer is not None:
        if cfg.verify:
            _verify_transfer_set(cfg.transfer)
        return StreamSource.open_transfer_set(cfg.transfer)
    spec = InputSpec.from_dict(cfg.input)
    return StreamSource.open_labelled(list(cfg.data), spec, cfg.label_column, cfg.num_classes)


def _verify_transfer_set(directory: str) -> None:
    """Refuse shards whose bytes differ from the manifest (one streamed SHA-256 read,
    ~1 GB/s: small next to an epoch). A damaged shard would otherwise train silently."""
    from transferset.verify import verify

    _, problems = verify(directory)
    if problems:
        listing = "; ".join(f"{p.shard}: {p.problem}" for p in problems)
        raise UserError(
            f"transfer set {directory} has {len(problems)} damaged shard(s) ({listing}); "
            f"run `transferset verify {directory} --drop-bad` and rerun its generate, or restore the files"
        )


def open_eval_data(path: str, input_spec: InputSpec, label_column: str, num_classes: int) -> StreamSource:
    """A transfer-set directory (labels + teacher agreement) or labelled Parquet."""
    if Path(path).is_dir() and (Path(path) / MANIFEST).exists():
        source = StreamSource.open_transfer_set(path)
        if source.num_classes != num_classes:
            raise UserError(f"eval transfer set {path} has {source.num_classes} classes but the student has {num_classes}; evaluate on data with the same classes")
        return source
    return StreamSource.open_labelled([path], input_spec, label_column, num_classes)


def _batches(source: StreamSource, cfg: TrainConfig, pos: Position, device: torch.device):
    """The batches of `pos.epoch` not applied yet, on `device` (pinned + non_blocking on CUDA)."""
    cuda = device.type == "cuda"
    if cfg.workers:
        dataset = StreamDataset(source, batch_size=cfg.batch_size, seed=cfg.seed, epoch=pos.epoch, start_batch=pos.batch_in_epoch)
        # The loader draws its base seed from this generator, not from the global RNG
        # (which checkpoints restore): a mid-epoch resume must not shift dropout's draws.
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, num_workers=cfg.workers, pin_memory=cuda, generator=torch.Generator().manual_seed(cfg.seed)
        )
        batches = iter(loader)
    else:
        batches = source.epoch(batch_size=cfg.batch_size, seed=cfg.seed, epoch=pos.epoch, start_batch=pos.batch_in_epoch)
    for batch in batches:
        if cuda and not cfg.workers:
            batch = batch.pin_memory()
        yield batch.to(device, non_blocking=cuda)


def _example_inputs(source: StreamSource, seed: int) -> torch.Tensor:
    """Zeros of the input shape; read one batch only when a --transform decides the shape."""
    spec = source.input_spec
    if spec.transform is None:
        return torch.zeros(2, *spec.shape)
    # Keep the transform's dtype (token ids stay integers): the student's output
    # check at start-up must see exactly what training will feed it.
    return next(iter(source.epoch(batch_size=2, seed=seed, epoch=0, shuffle=False))).inputs  # [<=2, ...]


def _rows_in_batches(num_rows: int, batch_size: int, start_batch: int) -> int:
    return max(num_rows - start_batch * batch_size, 0)


def _data_identity(cfg: TrainConfig, source: StreamSource) -> dict[str, Any]:
    """What the training data *is*, by content, not by path."""
    if cfg.transfer is not None:
        manifest = read_manifest(cfg.transfer)
        return {"transfer_shards": [s.sha256 for s in manifest.shards]}
    files = []
    for f in parquet_files(list(cfg.data)):  # the same expansion the stream reads
        meta = pq.ParquetFile(f).metadata
        files.append({"rows": meta.num_rows, "bytes": Path(f).stat().st_size, "schema": str(meta.schema.to_arrow_schema())})
    return {"data_files": files, "rows": source.num_rows, "labelled": source.num_labelled, "num_classes": source.num_classes}


# -- model-side helpers -------------------------------------------------------------------------


def _resolve_device(cfg: TrainConfig) -> torch.device:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {cfg.device}: only {torch.cuda.device_count()} GPU(s) visible; use cuda:0..cuda:{torch.cuda.device_count() - 1}")
    if cfg.precision == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA device (with a gradient scaler); use --precision bf16 or fp32 on CPU")
    return device


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed & 0xFFFFFFFF)
    random.seed(seed)


def _step_generator(seed: int, step: int) -> torch.Generator:
    """Jitter's own generator, a function of (seed, step): the same shifts after a resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) & 0x7FFF_FFFF_FFFF_FFFF)


def _zero_sums(device: torch.device) -> dict[str, Any]:
    """The epoch's running sums: loss parts x rows (float64 scalars), and rows."""
    zero = torch.zeros((), dtype=torch.float64, device=device)
    return {"loss": zero.clone(), "soft": zero.clone(), "hard": zero.clone(), "rows": 0}


def _check_finite(sums: dict[str, Any], pos: Position) -> None:
    loss = float(sums["loss"])
    if not math.isfinite(loss):
        raise UserError(f"training diverged: the loss is {loss} in epoch {pos.epoch + 1} (step {pos.step}); lower --lr or set --grad-clip")
