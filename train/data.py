"""Step 1 of the training recipe: open the training and evaluation data.

`open_training_data` opens the stream (a transfer set, verified against its
manifest unless --no-verify, or labelled Parquet), checks the config against
it, opens the --eval sources, and derives what the rest of the run needs from
the data: steps per epoch, the schedule's length, an example input batch (for the
student's output check and torch.export) and the data's identity (by content,
for the run's fingerprint).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import torch

from train.config import TrainConfig
from train.optim import resolve_warmup
from train.lm_losses import LM_LOSSES
from train.stream import StreamSource
from train.world import World
from transferset.errors import UserError
from transferset.inputs import InputSpec
from transferset.io import expand_parquet_paths, file_sha256
from transferset.progress import counted
from transferset.format.manifest import MANIFEST, read_manifest


@dataclass
class TrainingData:
    source: StreamSource
    eval_sources: dict[str, StreamSource]  # {--eval path: source}
    temperature: float  # the distillation T this run uses
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    example: torch.Tensor  # [<=2, *input_shape]: zeros, or the first rows through a --transform
    identity: dict[str, Any]  # what the training data is, by content (fingerprinted)

    @property
    def num_classes(self) -> int:
        return self.source.num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """[*shape] of one row; token rows: (L,), the length the student is built for."""
        return tuple(self.source.input_spec.shape) if self.per_token else tuple(self.example.shape[1:])

    @property
    def per_token(self) -> bool:
        return self.source.per_token

    def resolved(self, cfg: TrainConfig) -> dict[str, Any]:
        """The values the run derived from the data and the defaults (config.json's "resolved")."""
        source = self.source
        return {
            "input": source.input_spec.to_dict(),
            "input_shape": list(self.input_shape),
            "num_classes": self.num_classes,
            "class_names": source.provenance.class_names if source.provenance else None,
            "label_column": cfg.eval_label_column if cfg.transfer else cfg.label_column,
            "temperature": self.temperature,
            "stored_temperature": source.temperature,
            "combine": source.combine,
            "alpha": cfg.resolved_alpha,
            "lr": cfg.resolved_lr,
            "weight_decay": cfg.resolved_weight_decay,
            "rows": source.num_rows,
            "labelled_rows": source.num_labelled,
            "steps_per_epoch": self.steps_per_epoch,
            **({"per_token": True, "batch_size": cfg.batch_size} if self.per_token else {}),  # eval builds a causal LM
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
        }


def open_training_data(cfg: TrainConfig, world: World) -> TrainingData:
    """Open and check everything the run reads; nothing is written yet."""
    source = _open_source(cfg, world)
    per_token = source.per_token
    kind = source.provenance.target_kind if source.codec else None
    cfg.check_data(
        has_targets=source.has_targets, num_labelled=source.num_labelled, combine=source.combine, stored_temperature=source.temperature,
        target_kind=kind, kind_losses=(LM_LOSSES.get(kind, ("kd",)) if per_token else source.codec.losses) if source.codec else (),
        temperature_exact=source.codec.temperature_exact(source.provenance) if source.codec else True, per_token=per_token,
    )
    if per_token:
        refuse_class_student(cfg.student)
    if cfg.tokens_per_batch is not None:
        cfg.batch_size = rows_per_batch(cfg.tokens_per_batch, source.input_spec.size)
        if cfg.batch_size % world.world_size:
            length, step = source.input_spec.size, source.input_spec.size * world.world_size
            raise UserError(f"--tokens-per-batch {cfg.tokens_per_batch} gives a global batch of {cfg.batch_size} rows of {length} tokens, "
                            f"not divisible by the {world.world_size} processes; use a multiple of {step} tokens")
    eval_sources = {path: open_eval_data(path, source.input_spec, cfg.eval_label_column, source.num_classes, per_token=per_token,
                                         source_root=cfg.source_root, check_sources=cfg.verify and world.is_main)
                    for path in cfg.eval}
    steps_per_epoch = source.num_batches(cfg.batch_size, world)
    total_steps = cfg.epochs * steps_per_epoch
    identity = _data_identity(cfg, source)
    example = _example_inputs(source, cfg.seed)
    input_shape = tuple(example.shape[1:])
    if cfg.jitter and len(input_shape) not in (2, 3):
        raise UserError(f"--jitter shifts images, but these inputs have shape {input_shape}; use image inputs (C,H,W or H,W) or drop --jitter")
    return TrainingData(
        source=source,
        eval_sources=eval_sources,
        temperature=cfg.effective_temperature(source.temperature),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=resolve_warmup(total_steps, cfg.warmup_steps, cfg.warmup_fraction),
        example=example,
        identity=identity,
    )


def open_eval_data(path: str, input_spec: InputSpec, label_column: str, num_classes: int, what: str = "--eval",
                   per_token: bool = False, source_root: str | None = None, check_sources: bool = True) -> StreamSource:
    """A transfer-set directory (labels + teacher agreement) or labelled Parquet;
    `what` names the flag `path` came from in errors. A per-token run reads a
    per-token set (teacher agreement) or a token source (`convert --text`).
    `source_root`, `check_sources`: for a set with its inputs by reference (StreamSource)."""
    if Path(path).is_dir() and (Path(path) / MANIFEST).exists():
        source = StreamSource.open_transfer_set(path, source_root=source_root, check_sources=check_sources)
        if source.per_token != per_token:
            have, want = ("per-token", "class") if source.per_token else ("class", "per-token")
            raise UserError(f"{what} {path} holds {have} targets but the student was trained on {want} targets; evaluate on data of its kind")
        if per_token and source.input_spec.shape != input_spec.shape:
            raise UserError(f"{what} {path} has rows of {source.input_spec.size} tokens but the student reads {input_spec.size}; "
                            f"convert the text again with --max-length {input_spec.size}")
        if source.num_classes != num_classes:
            noun = "tokens in its vocabulary" if per_token else "classes"
            raise UserError(f"eval transfer set {path} has {source.num_classes} {noun} but the student has {num_classes}; evaluate on data with the same {noun}")
        return source
    if per_token:
        return StreamSource.open_tokens([path], input_spec, what=what)
    return StreamSource.open_labelled([path], input_spec, label_column, num_classes, what=what)


def rows_per_batch(tokens_per_batch: int, length: int) -> int:
    """--tokens-per-batch N over rows of L tokens: N // L rows (whole rows only)."""
    if tokens_per_batch < length:
        raise UserError(f"--tokens-per-batch {tokens_per_batch} is less than one row of this set ({length} tokens); "
                        f"give at least {length} (a batch is N // {length} rows)")
    return tokens_per_batch // length


def refuse_class_student(spec: str) -> None:
    """The built-in class-target students cannot read token rows: say so before building one."""
    if spec in ("train.students:mlp", "train.students:cnn"):
        raise UserError(f"--student {spec} is a class-target student, but this transfer set holds per-token targets (a language model's); "
                        f"use --student train.students:gpt or hf:DIR")


def _open_source(cfg: TrainConfig, world: World) -> StreamSource:
    if cfg.transfer is not None:
        if cfg.verify:
            _verify_transfer_set(cfg.transfer)
        # A reference set's sources are hashed by rank 0 (a refusal there stops every rank);
        # the other ranks check their size and rows, not N reads of the same corpus at once.
        return StreamSource.open_transfer_set(cfg.transfer, source_root=cfg.source_root, check_sources=cfg.verify and world.is_main)
    spec = InputSpec.from_dict(cfg.input)
    return StreamSource.open_labelled(list(cfg.data), spec, cfg.label_column, cfg.num_classes, what="--data")


def _verify_transfer_set(directory: str) -> None:
    """Refuse shards whose bytes differ from the manifest (one streamed SHA-256 read,
    ~1 GB/s: small next to an epoch). A damaged shard would otherwise train silently."""
    from transferset.format.verify import verify

    _, problems = verify(directory)
    if problems:
        listing = "; ".join(f"{p.shard}: {p.problem}" for p in problems)
        raise UserError(
            f"transfer set {directory} has {counted(len(problems), 'damaged shard')} ({listing}); "
            f"run `transferset verify {directory} --drop-bad` and rerun its generate, or restore the files"
        )


def _example_inputs(source: StreamSource, seed: int) -> torch.Tensor:
    """Zeros of the input shape; read one batch only when a --transform decides the shape."""
    spec = source.input_spec
    if source.per_token:  # token rows [2, 3, L]: token 0 everywhere, every position real
        example = torch.zeros(2, 3, spec.size, dtype=torch.int64)
        example[:, 1] = 1
        return example
    if spec.transform is None:
        return torch.zeros(2, *spec.shape)
    # Keep the transform's dtype (token ids stay integers): the student's output
    # check at start-up must see exactly what training will feed it.
    return next(iter(source.epoch(batch_size=2, seed=seed, epoch=0, shuffle=False))).inputs  # [<=2, ...]


def _data_identity(cfg: TrainConfig, source: StreamSource) -> dict[str, Any]:
    """What the training data *is*, by content, not by path."""
    if cfg.transfer is not None:
        manifest = read_manifest(cfg.transfer)
        return {"transfer_shards": [s.sha256 for s in manifest.shards]}
    files = []
    for f in expand_parquet_paths(list(cfg.data), "--data"):  # the same expansion the stream reads
        meta = pq.ParquetFile(f).metadata
        # sha256 of the bytes, as generate keys its sources: a file rewritten with the
        # same size, rows and schema is other data, and a resume must not mix the two.
        # One streamed read (~1 GB/s), small next to an epoch.
        files.append({"rows": meta.num_rows, "bytes": Path(f).stat().st_size, "schema": str(meta.schema.to_arrow_schema()),
                      "sha256": file_sha256(Path(f))})
    return {"data_files": files, "rows": source.num_rows, "labelled": source.num_labelled, "num_classes": source.num_classes}
