"""Parquet shards: encode and write on a background thread, publish by rename.

The teacher loop hands finished batches (plain NumPy/Arrow arrays) to a bounded
queue; one writer thread casts them to the declared schema, encodes Parquet and
writes. The queue bound keeps memory flat whatever the dataset size, and the
thread overlaps encoding with the next teacher batch (pyarrow releases the GIL
while it compresses and writes).

A shard is written as `.part-00007.parquet.tmp-<pid>`, fsynced, checksummed,
renamed to `part-00007.parquet`, and only then is its record written. A crash
at any point leaves finished shards (with their records, except perhaps the one
renamed just before the kill, which the next run redoes) and at most a temp file
the next run deletes: never a file that looks finished but is not
(benchmarks/kill_campaign.py kills generate at random points to check this).
A write the file system refuses (disk full, read-only, ...) deletes the temp
file and reaches the caller as a one-line UserError naming the shard.

Encoding: `format.schema.parquet_options` (zstd-1, BYTE_STREAM_SPLIT float32, PLAIN float16,
page CRCs that every reader in this package verifies).
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from transferset.format.manifest import ShardRecord, shard_name, write_shard_record
from transferset.format.schema import LABEL
from transferset.io import file_sha256, write_failure

QUEUE_DEPTH = 8  # batches in flight between the teacher loop and the writer
# A row group is `--row-group-rows` rows, fewer when that many would take more than
# this (wide per-token rows): the writer holds one row group in memory.
MAX_ROW_GROUP_BYTES = 256 << 20


class RowGroups:
    """Teacher batches -> row groups of exactly `rows` rows (the shard's last one shorter).

    The teacher batch size is a compute setting; the row group is the unit every reader
    seeks, shuffles and checks, so it is set by `--row-group-rows` alone (capped at
    MAX_ROW_GROUP_BYTES, measured on the shard's first batch). Both are pure functions
    of the configuration and the data, so a resumed shard has the same row groups."""

    def __init__(self, writer: pq.ParquetWriter, rows: int) -> None:
        self.writer, self.rows = writer, rows
        self.pending: list[pa.RecordBatch] = []
        self.pending_rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        if not self.pending and batch.num_rows and self.rows > 1:
            per_row = max(1, batch.nbytes // batch.num_rows)
            self.rows = max(1, min(self.rows, MAX_ROW_GROUP_BYTES // per_row))
        self.pending.append(batch)
        self.pending_rows += batch.num_rows
        while self.pending_rows >= self.rows:
            self._write(self.rows)

    def close(self) -> None:
        if self.pending_rows:
            self._write(self.pending_rows)

    def _write(self, rows: int) -> None:
        table = pa.Table.from_batches(self.pending)
        self.writer.write_table(table.slice(0, rows), row_group_size=rows)
        rest = table.slice(rows)
        self.pending = rest.to_batches() if rest.num_rows else []
        self.pending_rows = rest.num_rows


@dataclass
class _Open:
    index: int
    tmp: Path


@dataclass
class _Rows:
    index: int
    batch: pa.RecordBatch


@dataclass
class _Close:
    index: int


def temp_path(directory: Path, index: int) -> Path:
    """Where shard `index` is written before it is published."""
    return directory / f".{shard_name(index)}.tmp-{os.getpid()}"


def publish_shard(directory: Path, tmp: Path, index: int, rows: int, labelled: int) -> ShardRecord:
    """fsync, checksum and rename a fully written temp file; then write its record."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    final = directory / shard_name(index)
    record = ShardRecord(path=final.name, index=index, rows=rows, labelled_rows=labelled,
                         bytes=tmp.stat().st_size, sha256=file_sha256(tmp))
    os.replace(tmp, final)
    write_shard_record(directory, record)
    return record


class ShardWriter:
    """Background writer of one writer's shards into `directory`."""

    def __init__(self, directory: Path, schema: pa.Schema, options: dict, row_group_rows: int) -> None:
        self.directory = directory
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.options = options
        self.records: list[ShardRecord] = []
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_DEPTH)
        self._error: BaseException | None = None  # set by the thread, raised in the caller
        self._aborted = False
        self._thread = threading.Thread(target=self._run, name="transferset-writer", daemon=True)
        self._thread.start()

    # -- called from the teacher loop ------------------------------------------

    def open_shard(self, index: int) -> None:
        self._put(_Open(index, temp_path(self.directory, index)))

    def write(self, index: int, batch: pa.RecordBatch) -> None:
        self._put(_Rows(index, batch))

    def close_shard(self, index: int) -> None:
        self._put(_Close(index))

    def finish(self) -> list[ShardRecord]:
        """Wait until every queued shard is on disk; re-raise a writer failure."""
        self._put(None)
        self._thread.join()
        self._raise_if_failed()
        return self.records

    def abort(self) -> None:
        """Stop after an error elsewhere: drop queued work, delete the temp file."""
        self._aborted = True
        try:
            while True:
                self._queue.get_nowait()
        except queue.Empty:
            pass
        try:
            self._queue.put_nowait(None)
        except queue.Full:
            pass
        self._thread.join(timeout=60)

    def _put(self, item) -> None:
        while True:
            self._raise_if_failed()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            self._aborted = True
            try:  # no local names the error: one would tie it to its own traceback in a cycle
                raise self._error
            finally:
                self._error = None

    # -- the thread ----------------------------------------------------------------

    def _run(self) -> None:
        writer: pq.ParquetWriter | None = None
        groups: RowGroups | None = None
        current: _Open | None = None
        rows = labelled = 0
        try:
            while (item := self._queue.get()) is not None:
                if self._aborted:
                    break
                if isinstance(item, _Open):
                    current, rows, labelled = item, 0, 0
                    writer = pq.ParquetWriter(item.tmp, self.schema, **self.options)
                    groups = RowGroups(writer, self.row_group_rows)
                elif isinstance(item, _Rows):
                    groups.add(item.batch)
                    rows += item.batch.num_rows
                    labelled += item.batch.num_rows - item.batch.column(LABEL).null_count
                elif isinstance(item, _Close):
                    groups.close()
                    writer.close()
                    writer = None
                    self.records.append(publish_shard(self.directory, current.tmp, current.index, rows, labelled))
                    current = None
        except BaseException as error:  # handed to the teacher loop, which re-raises it
            # A refused write (disk full, file-size limit, read-only, permissions) becomes
            # the one-line UserError naming the shard, so the main thread reports that
            # line instead of an "internal error: OSError" (the temp file goes below).
            shard = self.directory / shard_name(current.index) if current is not None else self.directory
            self._error = write_failure(error, shard) or error
        finally:
            if writer is not None:
                try:
                    writer.close()
                except Exception:
                    pass
            if current is not None:
                try:
                    current.tmp.unlink(missing_ok=True)
                except OSError:
                    pass  # keep the write error; the next run deletes stale temp files
