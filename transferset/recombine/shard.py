"""One output shard from one source shard: same rows, same order, same row groups.

The id, source, label and input columns are copied unchanged; the target columns
are recomputed per row group with `combine()` and encoded by the codec, exactly
as `generate`'s `label_batch` does, so storage rules (float16 clamping, the
kept members' layout) are the same. `recombine_shard` has no threads or bars.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from transferset.combine import combine
from transferset.errors import UserError
from transferset.format.codecs import get_codec
from transferset.format.manifest import ShardRecord, shard_name
from transferset.format.schema import LABEL, LOGITS, TEACHER_LOGITS, parquet_options
from transferset.io import open_parquet, write_failure
from transferset.recombine.plan import Plan
from transferset.writer import publish_shard, temp_path

COMBINE_ROWS = 4096  # rows per combine() call


@dataclass(frozen=True)
class ShardJob:
    plan: Plan
    record: ShardRecord  # the source shard; the output shard has its index
    schema: pa.Schema  # the new set's, provenance included
    out: Path


def recombine_shard(job: ShardJob, advance: Callable[[int], None] = lambda rows: None) -> ShardRecord:
    """Write one output shard and publish it (temp file, fsync, rename, record)."""
    path = job.plan.source.directory / job.record.path
    # The source's shards were checked against the manifest when it was opened; this covers one
    # that changes between that check and this read.
    source = open_parquet(path, f"the shard is damaged: run `transferset verify {job.plan.source.directory} --drop-bad` "
                                "and rerun the command that made it")
    columns = [name for name in source.schema_arrow.names if _needed(name, job.plan)]
    tmp = temp_path(job.out, job.record.index)
    rows = labelled = 0
    try:
        with pq.ParquetWriter(tmp, job.schema, **parquet_options(job.schema, job.plan.provenance)) as writer:
            for group in range(source.num_row_groups):
                table = recombine_table(source.read_row_group(group, columns=columns), job, f"{path} row group {group}")
                # One call per source row group: the output keeps the source's row groups.
                writer.write_table(table, row_group_size=max(table.num_rows, 1))
                rows += table.num_rows
                labelled += table.num_rows - table.column(LABEL).null_count
                advance(table.num_rows)
        return publish_shard(job.out, tmp, job.record.index, rows, labelled)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        refused = write_failure(error, job.out / shard_name(job.record.index))
        if refused is None:
            raise
        raise refused from error


def _needed(name: str, plan: Plan) -> bool:
    if name == TEACHER_LOGITS:
        return plan.from_members or plan.provenance.teacher_logits_kept
    if name == LOGITS:
        return not plan.from_members
    return True  # id, source, label and the input columns: copied


def recombine_table(table: pa.Table, job: ShardJob, where: str) -> pa.Table:
    """One row group of the new set from one of the source."""
    plan = job.plan
    if plan.from_members:
        chosen = member_logits(table, len(plan.source.provenance.teachers), plan.source.num_classes, where)[plan.members]
        target = torch.empty(chosen.shape[1:], dtype=torch.float32)  # (B, C)
        # combine() works row by row (the same bits for any slicing, as generate's batches
        # show): slices only bound its float32 temporaries, ~4 x [K, rows, C].
        for start in range(0, table.num_rows, COMBINE_ROWS):
            rows = slice(start, start + COMBINE_ROWS)
            target[rows] = combine(chosen[:, rows], plan.provenance.combine, plan.provenance.temperature, plan.weights)
        targets = get_codec(plan.provenance.target_kind).encode(target, chosen, plan.provenance)
    else:  # the same members and weights: the stored target logits are the new ones (plan.py)
        targets = {LOGITS: table.column(LOGITS)}
        if plan.provenance.teacher_logits_kept:
            targets[TEACHER_LOGITS] = table.column(TEACHER_LOGITS)
    columns = {**{name: table.column(name) for name in table.column_names}, **targets}
    return pa.Table.from_arrays([columns[f.name] for f in job.schema], schema=job.schema)


def member_logits(table: pa.Table, members: int, num_classes: int, where: str) -> torch.Tensor:
    """The kept member logits of a row group as [K, B, C] in the storage dtype."""
    column = table.column(TEACHER_LOGITS).combine_chunks()  # FixedSizeList<FixedSizeList<f>[C]>[K]
    if column.null_count:
        raise UserError(f"{where}: null member logits; the transfer set is damaged, regenerate it")
    # flatten(), not .values: .values ignores slice offsets (measured on these machines).
    values = column.flatten().flatten().to_numpy(zero_copy_only=False)
    if values.size != table.num_rows * members * num_classes:  # flatten() drops null rows: a damaged file
        raise UserError(f"{where}: the member logits are not {members} x {num_classes} values per row; the transfer set is damaged, regenerate it")
    per_member = values.reshape(table.num_rows, members, num_classes).transpose(1, 0, 2).copy()  # (K, B, C), writable
    logits = torch.from_numpy(per_member)
    if not torch.isfinite(logits).all():
        raise UserError(f"{where}: member logits contain NaN or Inf; the transfer set is damaged, regenerate it")
    return logits
