"""One shard: read its rows, run the teachers, combine, encode, write.

The work is split into pure steps that an engine composes:

    read_batches(job)          source rows -> (first row, Arrow batch, named input tensors; a views
                               set's V views per row on CPU)
    label_batch(job, ...)      teachers -> combine -> codec -> one Arrow batch of the shard, in two
                               halves: teach (the device work, queued without a host sync) and
                               encode_batch (the finiteness check, the codec's copy to the host,
                               the Arrow columns)
    generate_shard(job)        both, written straight to the shard file: -> ShardRecord

`generate_shard` has no threads, queues or progress bars: it is what a Ray actor
or any other engine calls per shard. `LocalEngine` (engines.py) runs the same two
steps with a prefetch thread in front and the writer thread behind, so both
produce the same bytes of every stored value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from transferset import teachers as teacher_lib
from transferset.combine import combine
from transferset.errors import UserError
from transferset.format.manifest import ShardRecord, shard_name
from transferset.format.references import SOURCE_ROW, by_reference
from transferset.format.schema import ID, LABEL, SOURCE, parquet_options
from transferset.generate import specialists
from transferset.generate.setup import Context, named_inputs
from transferset.format.codecs import sequence_length
from transferset.inputs import TARGET_MASK
from transferset.io import write_failure
from transferset.sources import ShardPlan, SourceFile, read_shard_rows
from transferset.views.expand import ViewPlan
from transferset.writer import RowGroups, publish_shard, temp_path


@dataclass(frozen=True)
class ShardJob:
    plan: ShardPlan
    context: Context

    @property
    def source(self) -> SourceFile:
        return self.context.sources[self.plan.source]


def read_batches(job: ShardJob) -> Iterator[tuple[int, pa.RecordBatch, dict[str, torch.Tensor]]]:
    """(first row, Arrow batch, its named input tensors) over the shard's rows."""
    cfg = job.context.cfg
    spec = cfg.input_spec
    columns = list(spec.columns)
    if job.source.has_label:
        columns.append(cfg.label_column)
    if cfg.id_column and cfg.id_column not in columns:
        columns.append(cfg.id_column)
    pin = job.context.device.type == "cuda"
    views = _views(job.context)
    for first_row, batch in read_shard_rows(job.source, job.plan, columns, cfg.batch_size):
        x = spec.to_inputs(batch, f"source {job.source.path!r}", first_row=first_row)
        if views is not None and not pin:  # on CPU the views are made here, on the reading thread, beside the teachers
            x = views.expand(x, _ids(job, batch, first_row).to_pylist())[0]
        yield first_row, batch, ({k: v.pin_memory() for k, v in x.items()} if pin else x)


def _views(ctx: Context) -> ViewPlan | None:
    """The views of a views set (transferset/views/expand.py), else None. On CUDA they are made on
    the device in label_batch (CPU augmentation would starve a GPU teacher); on CPU by read_batches."""
    return ViewPlan.from_options(ctx.provenance.target_options, ctx.cfg.input_spec) if ctx.provenance.target_kind == "views" else None


@dataclass
class Taught:
    """One input batch after the teachers and the combine, still on the device: what
    `encode_batch` turns into the shard's rows. `teach` queues the device work without
    waiting for it, so an engine may run the next batch's teachers while it encodes this one."""

    job: ShardJob
    first_row: int
    batch: pa.RecordBatch
    x: dict[str, torch.Tensor]  # the inputs on the device (a views set: the views)
    ids: pa.Array
    params: torch.Tensor | None  # a views set's augmentation params
    member: torch.Tensor  # (K, B, C) or (K, B, L, V) float32
    not_finite: torch.Tensor  # bool (K, B): a member's row holds NaN/Inf (checked by encode_batch)
    target: torch.Tensor  # (B, C) or (B, L, V) float32 target logits
    ready: "torch.cuda.Event | None"  # recorded after the device work (CUDA only)


def label_batch(job: ShardJob, first_row: int, batch: pa.RecordBatch, x: dict[str, torch.Tensor]) -> pa.RecordBatch:
    """The shard's rows for one input batch: ids, source, label, targets, inputs."""
    return encode_batch(teach(job, first_row, batch, x))


def teach(job: ShardJob, first_row: int, batch: pa.RecordBatch, x: dict[str, torch.Tensor]) -> Taught:
    """Inputs to the device, (views,) teachers, combine: the device half of `label_batch`.
    On CUDA the device is made current, for code that creates tensors on "cuda" (an engine
    may call this on a thread of its own, whose current device is cuda:0)."""
    if job.context.device.type == "cuda":
        with torch.cuda.device(job.context.device):
            return _teach(job, first_row, batch, x)
    return _teach(job, first_row, batch, x)


def _teach(job: ShardJob, first_row: int, batch: pa.RecordBatch, x: dict[str, torch.Tensor]) -> Taught:
    ctx = job.context
    pin = ctx.device.type == "cuda"
    x = {k: v.to(ctx.device, non_blocking=pin) for k, v in x.items()}
    ids = _ids(job, batch, first_row)
    params, views = None, _views(ctx)
    if views is not None and pin:  # each row's V augmented views, made here on the device
        x, params = views.expand(x, ids.to_pylist())
    elif views is not None:  # made by read_batches; the params are a pure function of (seed, id, view)
        params = views.params(ids.to_pylist(), tuple(ctx.cfg.input_spec.shape))
    inputs = named_inputs(ctx.cfg, x)
    member = teacher_lib.run_teachers(ctx.teachers, inputs, ctx.cfg.precision)  # (K, B, C) or (K, B, L, V)
    if params is not None:
        member = member.reshape(member.shape[0], batch.num_rows, params.shape[1], -1)  # (K, B, views, C)
    not_finite = _not_finite_rows(member)  # checked in encode_batch: no host sync here
    special = None
    if ctx.specialists:  # other widths than the generalists: run (and checked) one by one, before the solver sees them
        _check_finite(not_finite, job, first_row, ctx.teachers)
        special, special_logits = specialists.run(ctx.cfg, ctx.specialists, inputs)
        for t, logits in zip(ctx.specialists, special_logits):
            _check_finite(_not_finite_rows(logits.unsqueeze(0)), job, first_row, [t])
    try:
        target = combine(member, ctx.cfg.combine, ctx.cfg.temperature, ctx.weights, special)  # (B, C) or (B, L, V) float32
    except torch.OutOfMemoryError:
        raise UserError(f"the device ran out of memory combining a batch of {batch.num_rows} rows; lower --batch-size "
                        f"(or --max-tokens-per-batch)") from None
    ready = None
    if pin:
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(ctx.device))
    return Taught(job, first_row, batch, x, ids, params, member, not_finite, target, ready)


def encode_batch(taught: Taught) -> pa.RecordBatch:
    """The host half of `label_batch`: refuse non-finite logits, then the codec's columns
    (which copy the targets to the host) and the ids, source, label and input columns."""
    job, batch, ctx = taught.job, taught.batch, taught.job.context
    _check_finite(taught.not_finite, job, taught.first_row, ctx.teachers)
    positions = taught.x.get(TARGET_MASK) if sequence_length(ctx.provenance) else None
    columns = {
        ID: taught.ids,
        # The path as the provenance records it: a rerun or another writer may spell it otherwise.
        SOURCE: pa.array([ctx.provenance.sources[job.plan.source]["path"]] * batch.num_rows, pa.string()),
        LABEL: batch.column(ctx.cfg.label_column).cast(pa.int32()) if job.source.has_label else pa.nulls(batch.num_rows, pa.int32()),
        **_encode(ctx, taught.target, taught.member, positions, taught.params),
    }
    if by_reference(ctx.provenance):  # the inputs stay in the source: name the row instead
        columns[SOURCE_ROW] = pa.array(np.arange(taught.first_row, taught.first_row + batch.num_rows, dtype=np.int64))
        return pa.RecordBatch.from_arrays([columns[f.name] for f in ctx.schema], schema=ctx.schema)
    spec = ctx.cfg.input_spec
    for name in spec.columns:
        column = batch.column(name)
        keep_as_is = spec.transform is not None or spec.image  # encoded images are stored as they are
        columns[name] = column if keep_as_is else spec.fixed_column(column, job.source.path, first_row=taught.first_row)
    return pa.RecordBatch.from_arrays([columns[f.name] for f in ctx.schema], schema=ctx.schema)


def _encode(ctx: Context, target: torch.Tensor, member: torch.Tensor, positions: torch.Tensor | None,
            params=None) -> dict[str, pa.Array]:
    """The codec's columns; per-token targets also name their target positions, views their params."""
    if params is not None:
        return ctx.codec.encode(target, member, ctx.provenance, params=params)
    if positions is None:
        return ctx.codec.encode(target, member, ctx.provenance)
    return ctx.codec.encode(target, member, ctx.provenance, positions=positions)


def generate_shard(job: ShardJob) -> ShardRecord:
    """Write one shard from scratch and publish it (temp file, fsync, rename, record)."""
    ctx = job.context
    tmp = temp_path(ctx.cfg.out, job.plan.index)
    rows = labelled = 0
    try:
        with pq.ParquetWriter(tmp, ctx.schema, **parquet_options(ctx.schema, ctx.provenance)) as writer:
            groups = RowGroups(writer, ctx.cfg.row_group_rows)
            for first_row, batch, x in read_batches(job):
                out = label_batch(job, first_row, batch, x)
                groups.add(out)
                rows += out.num_rows
                labelled += out.num_rows - out.column(LABEL).null_count
            groups.close()
        return publish_shard(ctx.cfg.out, tmp, job.plan.index, rows, labelled)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        refused = write_failure(error, ctx.cfg.out / shard_name(job.plan.index))
        if refused is None:
            raise
        raise refused from error


def _ids(job: ShardJob, batch: pa.RecordBatch, first_row: int) -> pa.Array:
    id_column = job.context.cfg.id_column
    if id_column:
        ids = batch.column(id_column).cast(pa.string())
        if ids.null_count:
            raise UserError(f"source {job.source.path!r}: --id-column {id_column!r} has null values; every row needs an id")
        return ids
    prefix = job.source.fingerprint[:16]
    return pa.array([f"{prefix}:{i}" for i in range(first_row, first_row + batch.num_rows)], pa.string())


def _not_finite_rows(member: torch.Tensor) -> torch.Tensor:
    """bool (K, B): member k's row b holds a NaN or Inf logit (any position, any view)."""
    bad = ~torch.isfinite(member).all(dim=-1)  # (K, B), or (K, B, L) per token / (K, B, V) per view
    return bad.any(dim=-1) if bad.ndim == 3 else bad


def _check_finite(bad: torch.Tensor, job: ShardJob, first_row: int, teachers: list) -> None:
    """Refuse a batch where a member returned NaN/Inf (`bad` from _not_finite_rows), naming it and the rows."""
    if not bad.any():
        return
    k = int(bad.any(dim=1).nonzero()[0])
    rows = bad[k].nonzero().flatten().cpu().tolist()
    shown = ", ".join(str(first_row + r) for r in rows[:5]) + (" ..." if len(rows) > 5 else "")
    raise UserError(
        f"teacher {teachers[k].name!r} returned NaN/Inf logits for {len(rows)} rows of {job.source.path!r} "
        f"(rows {shown}); check that teacher and those inputs (--input-scale/--input-mean/--input-std?)"
    )
