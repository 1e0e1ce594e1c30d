"""Stage 1: run a teacher ensemble once over the sources, write a transfer set.

The data flow, top to bottom:

    sources.py   Parquet rows, cut into a deterministic shard plan
      -> reader thread: rows -> input tensors (InputSpec), prefetched
      -> teachers.py: member logits [K, B, C] (float32, whatever precision ran)
      -> combine.py: target logits [B, C] in float32 log space
      -> writer.py: Arrow batches -> Parquet shards (background thread)
      -> manifest.py: _manifest.json once every planned shard exists

Resume: the shard plan and every batch boundary are pure functions of the
configuration, so a rerun skips the finished shards and recomputes the rest to
exactly the values an uninterrupted run would have written.
"""

from __future__ import annotations

import hashlib
import json
import math
import platform
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import torch

from transferset import __version__
from transferset import teachers as teacher_lib
from transferset.combine import combine, normalised_weights
from transferset.devices import resolve_device
from transferset.errors import UserError, first_line
from transferset.inputs import InputSpec
from transferset.manifest import JOB, MANIFEST, RECORDS_DIR, Manifest, atomic_write_json, read_shard_records, reporting_write_errors, shard_name, write_manifest
from transferset.progress import progress, say
from transferset.schema import COMBINE_METHODS, FORMAT_NAME, SCHEMA_VERSION, STORAGE_DTYPES, target_schema, with_provenance
from transferset.sources import SourceFile, ShardPlan, expand_sources, label_stats, open_source, plan_shards, read_shard_rows
from transferset.writer import ShardWriter

FLOAT16_MAX = 65504.0


@dataclass
class GenerateConfig:
    teachers: list[teacher_lib.TeacherSpec]
    sources: list[str]
    input_spec: InputSpec
    out: Path
    label_column: str | None = "label"
    id_column: str | None = None
    combine: str = "geometric"
    temperature: float = 1.0
    storage_dtype: str = "float16"
    keep_teacher_logits: bool = False
    class_names: list[str] | None = None
    batch_size: int = 1024
    shard_rows: int = 131072
    row_group_rows: int = 32768
    device: str = "auto"
    precision: str = "fp32"
    writer_index: int = 0
    num_writers: int = 1
    overwrite: bool = False
    trust_checkpoint: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        problems = []
        if not self.teachers:
            problems.append("no --teacher given; pass at least one")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be a positive number, got {self.temperature}")
        if self.combine not in COMBINE_METHODS:
            problems.append(f"unknown --combine {self.combine!r}; use arithmetic or geometric")
        if self.storage_dtype not in STORAGE_DTYPES:
            problems.append(f"--storage-dtype must be float16 or float32, got {self.storage_dtype!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--shard-rows", self.shard_rows), ("--row-group-rows", self.row_group_rows)):
            if value <= 0:
                problems.append(f"{flag} must be positive, got {value}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.writer_index < self.num_writers:
            problems.append(f"--writer-index must be in [0, --num-writers={self.num_writers}), got {self.writer_index}")
        if problems:
            raise UserError("; ".join(problems))


def run_generate(cfg: GenerateConfig) -> Manifest | None:
    """Generate (or resume, or finish) a transfer set. Returns its manifest when complete."""
    cfg.validate()
    # A transfer set written inside a source directory must not become a source of its own rerun.
    inside_out = lambda path: cfg.out.resolve() in Path(path).resolve().parents  # noqa: E731
    paths = [path for path in expand_sources(cfg.sources) if not inside_out(path)]
    if not paths:
        raise UserError(f"every --source file lies inside --out {str(cfg.out)!r}; give the source data, not the transfer set")
    sources = [open_source(path, cfg.label_column) for path in paths]
    input_fields = _check_sources(cfg, sources)
    fingerprint = _config_fingerprint(cfg, sources)
    done_already = _prepare_out(cfg, fingerprint)
    if done_already is not None:
        return done_already

    device = resolve_device(cfg.device)
    teachers = [teacher_lib.load_teacher(spec, device, cfg.trust_checkpoint) for spec in cfg.teachers]
    weights = normalised_weights(_ensemble_weights(cfg.teachers), len(teachers))
    num_classes = _probe_num_classes(cfg, teachers, sources[0], device)
    labelled = _check_labels(cfg, sources, num_classes)

    job_path = cfg.out / JOB
    if job_path.exists():
        provenance = json.loads(job_path.read_text())["provenance"]
    else:
        provenance = _provenance(cfg, sources, teachers, weights, num_classes, labelled, device, fingerprint)
        atomic_write_json(job_path, {"config_fingerprint": fingerprint, "provenance": provenance})
    schema = with_provenance(
        target_schema(num_classes, cfg.storage_dtype, input_fields, len(teachers) if cfg.keep_teacher_logits else 0), provenance
    )

    plans = plan_shards(sources, cfg.shard_rows)
    finished = {i for i, r in read_shard_records(cfg.out).items() if (cfg.out / r.path).is_file()}
    todo = [p for p in plans if p.index % cfg.num_writers == cfg.writer_index and p.index not in finished]
    for stale in _stale_temp_files(cfg, todo):
        with reporting_write_errors(stale):  # a read-only --out fails here first on a resume
            stale.unlink()
    if finished and todo and not cfg.quiet:
        say(f"resuming: {len(finished)} of {len(plans)} shards already written", cfg.quiet)

    started = time.perf_counter()
    rows_todo = sum(p.rows for p in todo)
    writer = ShardWriter(cfg.out, schema, cfg.row_group_rows)
    try:
        with progress("generate", rows_todo, cfg.quiet) as bar:
            for plan in todo:
                _generate_shard(cfg, plan, sources[plan.source], teachers, weights, writer, device, bar)
        writer.finish()
    except BaseException:
        writer.abort()
        raise
    elapsed = time.perf_counter() - started

    records = read_shard_records(cfg.out)
    missing = [p.index for p in plans if p.index not in records]
    if missing:
        say(f"wrote {len(todo)} shards ({rows_todo:,} rows) in {elapsed:.1f} s; waiting for other writers: {len(missing)} shards missing", cfg.quiet)
        return None
    manifest = write_manifest(cfg.out, provenance, [records[p.index] for p in plans])
    say(f"wrote {cfg.out}: {manifest.rows:,} rows, {len(plans)} shards, {rows_todo / max(elapsed, 1e-9):,.0f} rows/s", cfg.quiet)
    return manifest


def _stale_temp_files(cfg: GenerateConfig, todo: list[ShardPlan]) -> list[Path]:
    """Temp files a killed (or refused) write left behind, that no live writer can own:
    those of the shards (and shard records) this writer is about to redo, and with a
    single writer also those of `_job.json` / `_manifest.json`. Never read, but on a
    disk that was full they hold the space the rerun needs."""
    stale = []
    for p in todo:
        stale += cfg.out.glob(f".{shard_name(p.index)}.tmp-*")
        stale += (cfg.out / RECORDS_DIR).glob(f".{Path(shard_name(p.index)).stem}.json.tmp-*")
    if cfg.num_writers == 1:  # with several writers, another one may be writing these right now
        stale += cfg.out.glob(f".{JOB}.tmp-*")
        stale += cfg.out.glob(f".{MANIFEST}.tmp-*")
    return stale


# -- one shard -----------------------------------------------------------------


def _generate_shard(cfg, plan: ShardPlan, source: SourceFile, teachers, weights, writer: ShardWriter, device, bar) -> None:
    spec = cfg.input_spec
    columns = list(spec.columns)
    if source.has_label:
        columns.append(cfg.label_column)
    if cfg.id_column and cfg.id_column not in columns:
        columns.append(cfg.id_column)
    where = f"source {source.path!r}"
    pin = device.type == "cuda"

    def prepared() -> Iterator[tuple[int, pa.RecordBatch, torch.Tensor]]:
        for first_row, batch in read_shard_rows(source, plan, columns, cfg.batch_size):
            x = spec.to_tensor(batch, where, first_row=first_row)
            yield first_row, batch, (x.pin_memory() if pin else x)

    writer.open_shard(plan.index)
    for first_row, batch, x in _prefetch(prepared(), depth=2):
        member = teacher_lib.run_teachers(teachers, x.to(device, non_blocking=pin), cfg.precision)  # (K, B, C)
        _check_finite(member, teachers, batch, first_row, source, cfg)
        target = combine(member, cfg.combine, cfg.temperature, weights)  # (B, C) float32
        writer.write(plan.index, _arrow_batch(cfg, writer.schema, batch, first_row, source, target, member))
        bar.advance(batch.num_rows)
    writer.close_shard(plan.index)


def _arrow_batch(cfg, schema: pa.Schema, batch: pa.RecordBatch, first_row: int, source: SourceFile, target, member) -> pa.RecordBatch:
    n = batch.num_rows
    if cfg.id_column:
        ids = batch.column(cfg.id_column).cast(pa.string())
        if ids.null_count:
            raise UserError(f"source {source.path!r}: --id-column {cfg.id_column!r} has null values; every row needs an id")
    else:
        prefix = source.fingerprint[:16]
        ids = pa.array([f"{prefix}:{i}" for i in range(first_row, first_row + n)], pa.string())
    labels = batch.column(cfg.label_column).cast(pa.int32()) if source.has_label else pa.nulls(n, pa.int32())
    arrays = {
        "id": ids,
        "source": pa.array([source.path] * n, pa.string()),
        "label": labels,
        "logits": _fixed_floats(target.cpu().numpy(), cfg.storage_dtype),
    }
    if cfg.keep_teacher_logits:
        k = member.shape[0]
        per_row = member.permute(1, 0, 2).contiguous().cpu().numpy()  # (B, K, C)
        inner = _fixed_floats(per_row.reshape(n * k, -1), cfg.storage_dtype)
        arrays["teacher_logits"] = pa.FixedSizeListArray.from_arrays(inner, k)
    for name in cfg.input_spec.columns:
        col = batch.column(name)
        arrays[name] = cfg.input_spec.fixed_column(col, source.path, first_row=first_row) if cfg.input_spec.transform is None else col
    return pa.RecordBatch.from_arrays([arrays[f.name] for f in schema], schema=schema)


def _fixed_floats(values: np.ndarray, storage_dtype: str) -> pa.FixedSizeListArray:
    """[N, C] float32 -> FixedSizeList<storage>[C]. float16 clamps to its finite range
    (targets are shifted to max 0, so only probabilities below exp(-65504/T) clip)."""
    if storage_dtype == "float16":
        values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    flat = pa.array(values.reshape(-1), type=STORAGE_DTYPES[storage_dtype])
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[-1])


def _check_finite(member: torch.Tensor, teachers, batch: pa.RecordBatch, first_row: int, source: SourceFile, cfg) -> None:
    bad = ~torch.isfinite(member).all(dim=-1)  # (K, B)
    if not bad.any():
        return
    k = int(bad.any(dim=1).nonzero()[0])
    rows = bad[k].nonzero().flatten().cpu().tolist()
    shown = ", ".join(str(first_row + r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    raise UserError(
        f"teacher {teachers[k].name!r} returned NaN/Inf logits for {len(rows)} rows of {source.path!r} "
        f"(rows {shown}); check that teacher and those inputs (--input-scale/--input-mean/--input-std?)"
    )


def _prefetch(iterator: Iterator, depth: int) -> Iterator:
    """Run `iterator` on a thread, `depth` items ahead (reading overlaps teachers)."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def put(item) -> bool:
        """Hand over an item unless the consumer has gone (then the thread ends
        instead of blocking forever with the source file open)."""
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                pass
        return False

    def fill():
        try:
            for item in iterator:
                if not put(item):
                    return
            put(done)
        except BaseException as error:
            put(error)

    thread = threading.Thread(target=fill, name="transferset-reader", daemon=True)
    thread.start()
    try:
        while (item := q.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


# -- checks before anything is written ---------------------------------------------


def _ensemble_weights(specs) -> list[float] | None:
    """--teacher-weight per member; members without one weigh 1 (None: all equal)."""
    if all(s.ensemble_weight is None for s in specs):
        return None
    return [1.0 if s.ensemble_weight is None else s.ensemble_weight for s in specs]


def _check_sources(cfg: GenerateConfig, sources: list[SourceFile]) -> list[pa.Field]:
    fields = None
    seen: dict[str, str] = {}
    for s in sources:
        if not cfg.id_column and s.fingerprint in seen:
            # Derived ids come from the content hash: two identical files would give every row twice under one id.
            raise UserError(f"sources {seen[s.fingerprint]!r} and {s.path!r} have identical content; drop one, or give an --id-column")
        seen[s.fingerprint] = s.path
        cfg.input_spec.check_field(s.schema, f"source {s.path!r}")
        if cfg.id_column and cfg.id_column not in s.schema.names:
            raise UserError(f"source {s.path!r} has no --id-column {cfg.id_column!r}; add it or drop the flag to use derived ids")
        if cfg.id_column:
            id_type = s.schema.field(cfg.id_column).type
            if not (pa.types.is_integer(id_type) or pa.types.is_string(id_type) or pa.types.is_large_string(id_type)):
                raise UserError(f"source {s.path!r}: --id-column {cfg.id_column!r} is {id_type}; ids must be integers or strings")
        these = cfg.input_spec.stored_fields(s.schema)
        if fields is None:
            fields = these
        elif [f.type for f in these] != [f.type for f in fields]:
            raise UserError(
                f"source {s.path!r} stores its input as {these[0].type}, but {sources[0].path!r} as {fields[0].type}; "
                f"convert the sources to one type"
            )
    return fields


def _probe_num_classes(cfg, teachers, source: SourceFile, device) -> int:
    plan = ShardPlan(0, 0, 0, min(source.rows, 4))
    _, batch = next(read_shard_rows(source, plan, list(cfg.input_spec.columns), 4))
    x = cfg.input_spec.to_tensor(batch, f"source {source.path!r}").to(device)
    try:
        member = teacher_lib.run_teachers(teachers, x, cfg.precision)
    except UserError:
        raise
    except Exception as error:
        first = first_line(error)
        raise UserError(f"a teacher failed on the first input batch of shape {tuple(x.shape)} ({first}); check --input-shape and the teacher") from None
    num_classes = int(member.shape[-1])
    if num_classes < 2:
        raise UserError(f"teachers return {num_classes} class; distillation needs at least 2")
    if cfg.class_names is not None and len(cfg.class_names) != num_classes:
        raise UserError(f"--class-names has {len(cfg.class_names)} names but the teachers predict {num_classes} classes")
    return num_classes


def _check_labels(cfg, sources: list[SourceFile], num_classes: int) -> list[int]:
    labelled = []
    for s in sources:
        n, lo, hi = label_stats(s, cfg.label_column) if cfg.label_column else (0, None, None)
        if n and (lo < 0 or hi >= num_classes):
            bad = lo if lo < 0 else hi
            raise UserError(f"source {s.path!r} has label {bad}, outside [0, {num_classes}) for the teachers' {num_classes} classes; fix the labels or the teachers")
        labelled.append(n)
    return labelled


def _config_fingerprint(cfg: GenerateConfig, sources: list[SourceFile]) -> str:
    config = {
        "teachers": [{**teacher_lib.fingerprint(t), "weight": t.ensemble_weight} for t in cfg.teachers],
        "sources": [s.fingerprint for s in sources],
        "input": cfg.input_spec.to_dict(),
        "label_column": cfg.label_column,
        "id_column": cfg.id_column,
        "combine": cfg.combine,
        "temperature": cfg.temperature,
        "storage_dtype": cfg.storage_dtype,
        "keep_teacher_logits": cfg.keep_teacher_logits,
        "class_names": cfg.class_names,
        "shard_rows": cfg.shard_rows,
        "row_group_rows": cfg.row_group_rows,
        "precision": cfg.precision,
        "batch_size": cfg.batch_size,  # batch boundaries change float sums: resumed shards must match
        "num_writers": cfg.num_writers,
        "extra": cfg.extra,
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _prepare_out(cfg: GenerateConfig, fingerprint: str) -> Manifest | None:
    """Make the output directory ready; refuse one that holds something else."""
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a directory path")
    job = out / JOB
    if out.exists() and any(out.iterdir()):
        if not job.exists():
            raise UserError(f"--out {str(out)!r} exists and is not a transfer set; choose another directory (it is never deleted)")
        try:
            existing = json.loads(job.read_text()).get("config_fingerprint")
        except ValueError:
            existing = None
        if existing != fingerprint:
            if not cfg.overwrite:
                raise UserError(
                    f"--out {str(out)!r} holds a transfer set made with a different configuration; "
                    f"use another --out, or --overwrite to replace it"
                )
            with reporting_write_errors(out):
                shutil.rmtree(out)
        elif (out / MANIFEST).exists():
            from transferset.manifest import read_manifest

            say(f"{out} is already complete with this configuration; nothing to do", cfg.quiet)
            return read_manifest(out)
    # An unwritable or read-only --out fails here as one line (EACCES/EROFS), not a traceback.
    with reporting_write_errors(out):
        out.mkdir(parents=True, exist_ok=True)
    return None


def _provenance(cfg, sources, teachers, weights, num_classes, labelled, device, fingerprint) -> dict:
    import pyarrow

    return {
        "format": FORMAT_NAME,
        "schema_version": SCHEMA_VERSION,
        "target_kind": "dense",
        "num_classes": num_classes,
        "class_names": cfg.class_names,
        "temperature": float(cfg.temperature),
        "combine": cfg.combine,
        "logits": "softmax(logits / temperature) is the combined teacher distribution; rows shifted to max 0",
        "storage_dtype": cfg.storage_dtype,
        "teacher_logits_kept": cfg.keep_teacher_logits,
        "teachers": [t.describe(float(w)) for t, w in zip(teachers, weights.tolist())],
        "sources": [s.describe(n) for s, n in zip(sources, labelled)],
        "rows": sum(s.rows for s in sources),
        "input": cfg.input_spec.to_dict(),
        "label_column": cfg.label_column,
        "id_column": cfg.id_column,
        "shard_rows": cfg.shard_rows,
        "num_writers": cfg.num_writers,
        "versions": {
            "transferset": __version__,
            "torch": torch.__version__,
            "pyarrow": pyarrow.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
        },
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "precision": cfg.precision,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config_fingerprint": fingerprint,
    }
