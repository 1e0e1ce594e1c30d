"""Source rows: the Parquet files a transfer set is generated from.

`--source` takes files, directories and globs (`transferset.io.expand_parquet_paths`,
the one rule every command uses). Each file is one `SourceFile` with a content fingerprint (SHA-256 of its bytes),
so that row ids and the resume check do not depend on where the file lives.

A row is labelled when the label column exists and is non-null there; a file
without the label column is wholly unlabelled.

The shard plan cuts every file into row ranges of at most `shard_rows` rows;
shards never span files, so a shard is a pure function of (file, start, stop)
and a rerun reproduces it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from transferset.errors import UserError
from transferset.io import READ_BUFFER, file_sha256
from transferset.labels import LabelStats


@dataclass(frozen=True)
class SourceFile:
    path: str
    fingerprint: str  # sha256 of the file's bytes
    rows: int
    schema: pa.Schema
    row_group_rows: tuple[int, ...]
    has_label: bool

    def describe(self, labelled_rows: int, resolved: bool = False) -> dict:
        """`resolved`: also the absolute path and the size, for a set that joins its inputs from
        here (format/references.py looks there and checks the size under --no-verify)."""
        return {
            "path": self.path,
            "fingerprint": self.fingerprint,
            "rows": self.rows,
            "labelled_rows": labelled_rows,
            "labelled": labelled_rows > 0,
            **({"resolved": str(Path(self.path).resolve()), "bytes": Path(self.path).stat().st_size} if resolved else {}),
        }


@dataclass(frozen=True)
class ShardPlan:
    index: int
    source: int  # index into the list of SourceFile
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def open_source(path: str, label_column: str | None) -> SourceFile:
    try:
        meta = pq.ParquetFile(path).metadata
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise UserError(f"source {path!r} is not a readable Parquet file ({error}); convert it with `transferset convert`") from None
    if meta.num_rows == 0:
        raise UserError(f"source {path!r} is empty (0 rows); remove it from --source")
    has_label = label_column is not None and label_column in schema.names
    if has_label:
        ltype = schema.field(label_column).type
        if not (pa.types.is_integer(ltype) or pa.types.is_null(ltype)):
            raise UserError(
                f"source {path!r}: label column {label_column!r} is {ltype}, not integers; "
                f"map class names to integer ids first (class names go in --class-names)"
            )
    return SourceFile(
        path=path,
        fingerprint=file_sha256(Path(path)),
        rows=meta.num_rows,
        schema=schema,
        row_group_rows=tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups)),
        has_label=has_label,
    )


def label_stats(source: SourceFile, label_column: str) -> tuple[int, int | None, int | None]:
    """(labelled rows, min label, max label), from one streamed column."""
    stats = LabelStats()
    if source.has_label:
        f = pq.ParquetFile(source.path, pre_buffer=False, buffer_size=READ_BUFFER)
        for batch in f.iter_batches(batch_size=1 << 16, columns=[label_column]):
            stats.update(batch.column(0))
    return stats.labelled, stats.lo, stats.hi


def check_unique_ids(files: list[str], id_column: str) -> None:
    """Refuse an --id-column with null or repeated values, within a file or across files.

    A transfer set holds every source row exactly once, and consumers join it back to
    their data on `id`: a repeated id would silently join two rows to one. Checked
    before anything is written, on the ids as generate stores them (cast to string).
    Reads only that column, a row group at a time; holds the ids once (~10 B per row
    for short ids). Files that are unreadable or lack the column are skipped here:
    opening the sources reports them with their own message.
    """
    per_file: list[tuple[str, pa.ChunkedArray]] = []
    for path in files:
        try:
            f = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER)
        except (pa.ArrowInvalid, OSError):
            continue
        if id_column not in f.schema_arrow.names:
            continue
        try:
            chunks = [batch.column(0).cast(pa.string()) for batch in f.iter_batches(batch_size=1 << 16, columns=[id_column])]
        except pa.ArrowNotImplementedError as error:  # e.g. a list column has no string form
            raise UserError(f"source {path!r}: --id-column {id_column!r} cannot be cast to a string id ({error}); use a scalar column") from None
        ids = pa.chunked_array(chunks, pa.string())
        if ids.null_count:
            first = int(pc.index(pc.is_null(ids), True).as_py())
            raise UserError(f"source {path!r}: --id-column {id_column!r} has {ids.null_count:,} null ids (first: row {first}); "
                            f"every row needs an id: fill them, or drop --id-column to use derived ids")
        per_file.append((path, ids))
    if not per_file:
        return
    every = pa.chunked_array([c for _, ids in per_file for c in ids.chunks], pa.string())
    if pc.count_distinct(every).as_py() == len(every):
        return
    counts = pc.value_counts(every)
    repeated = counts.filter(pc.greater(counts.field("counts"), 1))
    example, times = repeated[0]["values"].as_py(), repeated[0]["counts"].as_py()
    holders = [path for path, ids in per_file if pc.any(pc.equal(ids, example)).as_py()]
    where = f"in {holders[0]!r}" if len(holders) == 1 else f"in {len(holders)} sources ({', '.join(map(repr, holders[:3]))})"
    raise UserError(
        f"--id-column {id_column!r} is not unique ({len(repeated):,} repeated ids, e.g. {example!r} {times} times {where}); "
        f"a transfer set holds every row exactly once and readers join on id: use a column unique across all sources, "
        f"or drop --id-column to use derived ids (<file hash>:<row>)"
    )


def plan_shards(sources: list[SourceFile], shard_rows: int) -> list[ShardPlan]:
    plans = []
    for s_idx, source in enumerate(sources):
        for start in range(0, source.rows, shard_rows):
            plans.append(ShardPlan(len(plans), s_idx, start, min(start + shard_rows, source.rows)))
    return plans


def read_shard_rows(source: SourceFile, plan: ShardPlan, columns: list[str], batch_size: int) -> Iterator[tuple[int, pa.RecordBatch]]:
    """Yield (first row index, batch) over rows [plan.start, plan.stop) of one file.

    Reads only the row groups that overlap the range, streamed a batch at a time
    (pre_buffer=False keeps memory at a batch, measurements on these machines), and re-cuts them
    into batches of exactly `batch_size` rows (the last may be shorter), so the
    batches, and with them the teachers' float results, are the same on every run.
    Streamed, not a row group at a time: decoding a whole 32,768-row group took longer
    than the prefetched batches lasted, so the teachers waited at every group boundary
    (2.0-3.6 s of ~40 at 240k MNIST rows, `benchmarks/profile_generate.py --waits`).
    """
    f = pq.ParquetFile(source.path, pre_buffer=False, buffer_size=READ_BUFFER)
    bounds = np.concatenate([[0], np.cumsum(source.row_group_rows)])
    pending: pa.Table | None = None  # rows read but not yet yielded (slices are zero-copy)
    next_row = plan.start
    for g in range(len(source.row_group_rows)):
        g_start, g_stop = int(bounds[g]), int(bounds[g + 1])
        if g_stop <= plan.start or g_start >= plan.stop:
            continue
        lo, hi = max(plan.start, g_start) - g_start, min(plan.stop, g_stop) - g_start
        for table in _row_group_slices(f, g, columns, lo, hi, min(batch_size, hi)):  # pyarrow takes a C long
            pending = table if pending is None else pa.concat_tables([pending, table])
            offset = 0
            while pending.num_rows - offset >= batch_size:
                yield next_row, _one_batch(pending.slice(offset, batch_size))
                offset += batch_size
                next_row += batch_size
            pending = pending.slice(offset)
    if pending is not None and pending.num_rows:
        yield next_row, _one_batch(pending)


def _row_group_slices(f: pq.ParquetFile, group: int, columns: list[str], lo: int, hi: int, batch_size: int) -> Iterator[pa.Table]:
    """Rows [lo, hi) of one row group, decoded `batch_size` rows at a time. The reader is
    closed when the group is done (an Arrow reader left to interpreter shutdown can abort
    the process: apache/arrow#34314)."""
    batches = f.iter_batches(batch_size=batch_size, row_groups=[group], columns=columns, use_threads=False)
    first = 0  # the group's row that `batch` starts at
    try:
        for batch in batches:
            start, stop = max(lo, first), min(hi, first + batch.num_rows)
            if start < stop:
                yield pa.Table.from_batches([batch.slice(start - first, stop - start)])
            first += batch.num_rows
            if first >= hi:
                break
    finally:
        batches.close()


def read_first_rows(source: SourceFile, columns: list[str], rows: int) -> pa.RecordBatch:
    """The first `rows` rows (for the probe): streamed, so a 32,768-row group is not decoded
    whole to look at four rows."""
    f = pq.ParquetFile(source.path, pre_buffer=False, buffer_size=READ_BUFFER)
    return next(f.iter_batches(batch_size=rows, columns=columns))


def _one_batch(table: pa.Table) -> pa.RecordBatch:
    """One RecordBatch (copying only when the rows straddle two row groups)."""
    return table.combine_chunks().to_batches()[0]
