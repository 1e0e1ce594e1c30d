"""Stream whole batches from Parquet: a transfer set's soft targets, or plain labelled data.

Reading follows `order.py`: an epoch is a sequence of windows (a few row groups
read together and shuffled among themselves). For each window the reader

* reads its row groups one at a time (`read_row_group`, never a whole file; files
  opened with `pre_buffer=False`: the default pre-buffering holds about the whole
  file in memory, measurements on these machines);
* converts each row group once into the window's tensors: inputs with the set's
  `InputSpec` (the conversion the teachers saw) to float32 [rows, *shape], target
  logits float16 -> float32 [rows, C], labels int64 [rows] (-1 = none);
* then cuts whole batches by `index_select`, which costs what indexing tensors
  already in memory costs (per-sample `__getitem__` + collate reached 25-37% of
  the in-memory bound on 2 cores, measurements on these machines; converting inputs per batch instead
  of per row group cost ~1.5x in epoch time, measured in bench_stream.py).

The next window is read on a background thread while the current one is used, and
a set that fits in one window is read once and kept. Memory is therefore bounded by
two windows (DEFAULT_WINDOW_BYTES), whatever the dataset size. A batch that
straddles two windows carries its first part over (< batch_size rows).
"""

from __future__ import annotations

import glob
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from train import order
from transferset import schema
from transferset.errors import UserError, first_line
from transferset.inputs import InputSpec
from transferset.inspect import mixed_shards_message, shard_mismatch
from transferset.manifest import read_manifest

# Shuffle window: whole row groups whose rows take at most this many bytes as window
# tensors (float32 inputs and targets, int64 labels), at least one row group. A byte
# budget, not a row count, so that wide rows (images) cannot multiply the memory.
# MNIST train (60k x (784 + 10) float32, ~190 MB) fits one window: a full shuffle,
# read once and kept. 1M rows of 100 targets + 16 features (~470 MB) take two.
# Held at most: the window in use + the one read ahead + one row group in Arrow form.
DEFAULT_WINDOW_BYTES = 256 << 20
_READ_BUFFER = 1 << 20


@dataclass
class Batch:
    inputs: torch.Tensor  # float32 [B, *input_shape]
    labels: torch.Tensor  # int64 [B], -1 where the row has no label
    target_logits: torch.Tensor | None  # float32 [B, C]: softmax(t / T) is the teacher distribution; None for plain labelled data
    extra: dict[str, Any] = field(default_factory=dict)  # columns_extra: tensors, or lists of str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(move(self.inputs), move(self.labels), move(self.target_logits), {k: move(v) for k, v in self.extra.items()})

    def pin_memory(self) -> "Batch":
        """Page-locked copies, for fast non_blocking copies to CUDA (a no-op without CUDA)."""
        if not torch.cuda.is_available():
            return self
        pin = lambda t: t.pin_memory() if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(pin(self.inputs), pin(self.labels), pin(self.target_logits), {k: pin(v) for k, v in self.extra.items()})


@dataclass(frozen=True)
class _RowGroup:
    path: str
    index: int  # row group index inside the file
    rows: int
    nbytes: int  # uncompressed Parquet size of all its columns (footer metadata)


def _open(path: str) -> pq.ParquetFile:
    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=_READ_BUFFER)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read as Parquet ({first_line(error)}); the file is damaged or truncated: restore or regenerate it") from None



class StreamSource:
    """Row groups of one dataset plus how to turn them into batches. Holds no open
    files (safe to copy into DataLoader workers); each window opens what it reads."""

    def __init__(self, *, row_groups: list[_RowGroup], input_spec: InputSpec, label_column: str, num_classes: int,
                 num_labelled: int, target_column: str | None, temperature: float | None, combine: str | None,
                 provenance: dict | None, columns: frozenset[str], window_rows: int | None, window_bytes: int) -> None:
        self._row_groups = [g for g in row_groups if g.rows > 0]
        self.num_rows = sum(g.rows for g in self._row_groups)
        if self.num_rows == 0:
            raise UserError("the data has 0 rows; point at non-empty Parquet files")
        if (window_rows is not None and window_rows < 1) or window_bytes < 1:
            raise UserError(f"the shuffle window ({window_rows} rows, {window_bytes} bytes) must be positive")
        self.input_spec = input_spec
        self.num_classes = num_classes
        self.num_labelled = num_labelled
        self.has_targets = target_column is not None
        self.temperature = temperature
        self.combine = combine
        self.provenance = provenance
        self._label_column = label_column
        self._target_column = target_column
        self._columns = columns  # the columns every file has (for columns_extra)
        self._kept: tuple | None = None  # (key, _WindowData) of a set that fits in one window
        # Row groups per window, sized by the largest row group so that no window exceeds the budget.
        if window_rows is not None:
            self._window = max(1, window_rows // max(g.rows for g in self._row_groups))
        else:
            row_bytes = 8 + (4 * num_classes if target_column else 0)  # int64 label, float32 targets
            if input_spec.transform is None:  # float32 inputs
                sizes = [g.rows * (row_bytes + 4 * input_spec.size) for g in self._row_groups]
            else:  # inputs kept as Arrow until the transform: count the stored row group
                sizes = [g.nbytes + g.rows * row_bytes for g in self._row_groups]
            self._window = max(1, window_bytes // max(sizes))

    @property
    def window_row_groups(self) -> int:
        """Row groups per shuffle window (fixed for a source: part of the epoch order)."""
        return self._window

    # -- opening ------------------------------------------------------------

    @classmethod
    def open_transfer_set(cls, directory, *, window_rows: int | None = None, window_bytes: int = DEFAULT_WINDOW_BYTES) -> "StreamSource":
        """`window_rows`, when given, sizes the shuffle window in rows instead of bytes."""
        manifest = read_manifest(directory)
        provenance = manifest.provenance
        spec = InputSpec.from_dict(provenance["input"])
        num_classes = manifest.num_classes
        row_groups, columns = [], None
        for record, path in zip(manifest.shards, manifest.shard_paths()):
            pf = _open(str(path))
            if pf.metadata.num_rows != record.rows:
                raise UserError(f"{path} has {pf.metadata.num_rows} rows but manifest.json says {record.rows}; the transfer set is damaged, regenerate it")
            arrow_schema = pf.schema_arrow
            mismatch = shard_mismatch(provenance, arrow_schema)
            if mismatch:
                raise UserError(mixed_shards_message(path, mismatch, directory))
            logits = arrow_schema.field(schema.LOGITS) if schema.LOGITS in arrow_schema.names else None
            if logits is None or not pa.types.is_fixed_size_list(logits.type) or logits.type.list_size != num_classes:
                raise UserError(f"{path}: column {schema.LOGITS!r} is missing or not {num_classes} values per row; the transfer set is damaged, regenerate it")
            if schema.LABEL not in arrow_schema.names:
                raise UserError(f"{path} has no {schema.LABEL!r} column; the transfer set is damaged, regenerate it")
            spec.check_field(arrow_schema, str(path))
            columns = set(arrow_schema.names) if columns is None else columns & set(arrow_schema.names)
            row_groups += [_RowGroup(str(path), i, pf.metadata.row_group(i).num_rows, pf.metadata.row_group(i).total_byte_size)
                           for i in range(pf.num_row_groups)]
        return cls(row_groups=row_groups, input_spec=spec, label_column=schema.LABEL, num_classes=num_classes,
                   num_labelled=sum(s.labelled_rows for s in manifest.shards), target_column=schema.LOGITS,
                   temperature=manifest.temperature, combine=manifest.combine, provenance=provenance, columns=frozenset(columns),
                   window_rows=window_rows, window_bytes=window_bytes)

    @classmethod
    def open_labelled(cls, paths: list[str], input_spec: InputSpec, label_column: str, num_classes: int | None = None,
                      *, window_rows: int | None = None, window_bytes: int = DEFAULT_WINDOW_BYTES) -> "StreamSource":
        """Plain Parquet (files, directories, globs) with inputs and integer labels."""
        files = parquet_files(paths)
        row_groups, labelled, high, columns = [], 0, None, None
        for path in files:
            pf = _open(path)
            arrow_schema = pf.schema_arrow
            if label_column not in arrow_schema.names:
                raise UserError(f"{path} has no label column {label_column!r} (columns: {', '.join(arrow_schema.names)}); "
                                f"point at labelled data, or name its label column (--label-column; --eval-label-column for train --eval)")
            ltype = arrow_schema.field(label_column).type
            if not pa.types.is_integer(ltype):
                raise UserError(f"{path}: label column {label_column!r} holds {ltype}, not integer class ids; convert it to integers 0..C-1")
            input_spec.check_field(arrow_schema, path)
            columns = set(arrow_schema.names) if columns is None else columns & set(arrow_schema.names)
            for i in range(pf.num_row_groups):
                rows, nulls, lo, hi = _label_stats(pf, i, label_column, path)
                row_groups.append(_RowGroup(path, i, rows, pf.metadata.row_group(i).total_byte_size))
                labelled += rows - nulls
                if lo is not None:
                    if lo < 0:
                        raise UserError(f"{path}: label {lo} in column {label_column!r} is negative; class ids must be 0..C-1")
                    if num_classes is not None and hi >= num_classes:
                        raise UserError(f"{path}: label {hi} in column {label_column!r} is outside [0, {num_classes}) for {num_classes} classes; fix the labels (or --num-classes when training on --data)")
                    high = hi if high is None else max(high, hi)
        if sum(g.rows for g in row_groups) == 0:
            raise UserError(f"{', '.join(map(str, paths))}: no rows; point at non-empty Parquet files")
        if high is None:
            raise UserError(f"{', '.join(map(str, paths))}: label column {label_column!r} has no labels (all null); fix --label-column")
        if num_classes is None:
            num_classes = high + 1
            if num_classes < 2:
                raise UserError(f"labels in {label_column!r} only take the value 0; pass the number of classes explicitly (--num-classes)")
        return cls(row_groups=row_groups, input_spec=input_spec, label_column=label_column, num_classes=num_classes,
                   num_labelled=labelled, target_column=None, temperature=None, combine=None, provenance=None, columns=frozenset(columns),
                   window_rows=window_rows, window_bytes=window_bytes)

    # -- the epoch ----------------------------------------------------------

    def num_batches(self, batch_size: int, rank: int = 0, world_size: int = 1, drop_last: bool = False) -> int:
        return self._part(batch_size, rank, world_size, drop_last).num_batches

    def epoch(self, *, batch_size: int, seed: int, epoch: int, start_batch: int = 0, shuffle: bool = True, rank: int = 0,
              world_size: int = 1, drop_last: bool = False, columns_extra: tuple = ()) -> Iterator[Batch]:
        """This rank's batches of one epoch, from batch `start_batch` on (see order.py).

        Deterministic for (seed, epoch, data, batch_size, rank, world_size); resuming at
        start_batch=k yields exactly the batches after the first k, and reads no window
        that holds none of them."""
        return self._batches(batch_size=batch_size, seed=seed, epoch=epoch, start_batch=start_batch, shuffle=shuffle,
                             rank=rank, world_size=world_size, drop_last=drop_last, columns_extra=columns_extra)

    def _part(self, batch_size: int, rank: int, world_size: int, drop_last: bool) -> order.RankPart:
        if batch_size < 1:
            raise UserError(f"batch size {batch_size} must be >= 1")
        if world_size < 1 or not 0 <= rank < world_size:
            raise UserError(f"rank {rank} is outside world size {world_size}")
        if not drop_last and self.num_rows < world_size:
            raise UserError(f"{self.num_rows} rows cannot be split over {world_size} ranks; use fewer ranks or more data")
        return order.rank_part(self.num_rows, batch_size, world_size, rank, drop_last)

    def _batches(self, *, batch_size, seed, epoch, start_batch, shuffle, rank, world_size, drop_last, columns_extra,
                 worker: int = 0, num_workers: int = 1) -> Iterator[Batch]:
        part = self._part(batch_size, rank, world_size, drop_last)
        if part.num_batches == 0:
            raise UserError(f"{self.num_rows} rows give no full batch of {batch_size} per rank over {world_size} rank(s) with drop_last; lower the batch size")
        if not 0 <= start_batch <= part.num_batches:
            raise UserError(f"resume position {start_batch} is outside this epoch's {part.num_batches} batches; the data, batch size or world size changed since the checkpoint")
        extra = tuple(dict.fromkeys(columns_extra))
        missing = [name for name in extra if name not in self._columns]
        if missing:
            raise UserError(f"extra column(s) {', '.join(missing)} not in the data (columns: {', '.join(sorted(self._columns))})")
        plan = order.epoch_plan([g.rows for g in self._row_groups], seed, epoch, self._window, shuffle)
        mine = order.resume_worker_batches(part.num_batches, num_workers, worker, start_batch)
        return self._read(plan, part, mine.start, mine.stop, extra)

    def _read(self, plan: list[order.Window], part: order.RankPart, first: int, stop: int, extra: tuple) -> Iterator[Batch]:
        if first >= stop:
            return
        lo, hi = part.batch_bounds(first)[0], part.batch_bounds(stop - 1)[1]
        k, pending = first, []  # pending: the parts of batch k read so far (it may straddle windows)
        windows = order.windows_between(plan, lo, hi)
        for window, data in zip(windows, self._windows(windows, extra, whole_set=len(plan) == 1)):
            positions = window.order()
            while k < stop:
                b_lo, b_hi = part.batch_bounds(k)
                if b_lo >= window.stop:
                    break
                a, b = max(b_lo, window.start), min(b_hi, window.stop)
                pending.append(data.take(positions[a - window.start : b - window.start]))
                if b_hi > window.stop:
                    break  # the rest of batch k is in the next window
                yield self._assemble(pending, extra)
                k, pending = k + 1, []
            del data  # release this window before the one after the next is read

    def _windows(self, windows: list[order.Window], extra: tuple, whole_set: bool) -> Iterator["_WindowData"]:
        """The windows' data, each read on a background thread while the previous one
        is being consumed (pyarrow decodes without the GIL, so reading overlaps the
        training step). At most two windows are alive: the one in use and the next.

        A set that fits in one window is read once and kept: every epoch needs exactly
        that window (only its order changes), so it costs what in-memory data costs."""
        if whole_set:
            key = (windows[0].row_groups, extra, self.input_spec)
            if self._kept is None or self._kept[0] != key:
                self._kept = None  # drop the old one before reading the new one
                self._kept = (key, self._load(windows[0], extra))
            yield self._kept[1]
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="transferset-read") as pool:
            upcoming = pool.submit(self._load, windows[0], extra)
            for i in range(len(windows)):
                data = upcoming.result()  # re-raises a read error (a UserError naming the file) here
                upcoming = pool.submit(self._load, windows[i + 1], extra) if i + 1 < len(windows) else None
                yield data
                del data

    # -- one window ---------------------------------------------------------

    def _load(self, window: order.Window, extra: tuple) -> "_WindowData":
        """Read a window's row groups one at a time and convert each straight into the
        window's tensors (peak: the window plus one row group in Arrow form)."""
        spec = self.input_spec
        names = list(dict.fromkeys([*spec.columns, self._label_column, *([self._target_column] if self._target_column else []), *extra]))
        data = _WindowData(window.rows, self.num_classes if self._target_column else None)
        input_tables, extra_tables, files, offset = [], [], {}, 0
        for g in window.row_groups:
            ref = self._row_groups[g]
            pf = files.get(ref.path) or files.setdefault(ref.path, _open(ref.path))
            try:
                table = pf.read_row_group(ref.index, columns=names)
            except (pa.ArrowException, OSError, ValueError) as error:
                raise UserError(f"{ref.path}: row group {ref.index} cannot be read ({first_line(error)}); the file is damaged or truncated: restore or regenerate it") from None
            if table.num_rows != ref.rows:
                raise UserError(f"{ref.path}: row group {ref.index} has {table.num_rows} rows, its footer says {ref.rows}; the file is damaged: restore or regenerate it")
            rows = slice(offset, offset + ref.rows)
            # Written through NumPy views: Arrow's buffers are read-only, and the assignment
            # is the one copy (and the one float16 -> float32 conversion) these columns get.
            data.labels.numpy()[rows] = self._labels(table.column(self._label_column), ref.path)
            if self._target_column:
                data.targets.numpy()[rows] = _targets(table.column(self._target_column), self.num_classes, ref.path)
            if spec.transform is None:
                # The InputSpec conversion, once per row group instead of once per batch:
                # batches then cost an index_select, as for data already in memory.
                data.put_inputs(rows, spec.to_tensor(table, where=f"{ref.path} row group {ref.index}"))
            else:
                input_tables.append(table.select(list(spec.columns)))
            if extra:
                extra_tables.append(table.select(list(extra)))
            offset += ref.rows
            del table
        if input_tables:
            data.input_table = pa.concat_tables(input_tables).combine_chunks()
        if extra_tables:
            data.extra_table = pa.concat_tables(extra_tables).combine_chunks()
        return data

    def _labels(self, column: pa.ChunkedArray, path: str) -> np.ndarray:
        """int64 [rows], -1 for null; refuses ids outside [0, num_classes)."""
        if column.length() > column.null_count:
            bounds = pc.min_max(column)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            if lo < 0 or hi >= self.num_classes:
                raise UserError(f"{path}: label {lo if lo < 0 else hi} in column {self._label_column!r} is outside [0, {self.num_classes}); fix the labels or the number of classes")
        # int64 first: -1 does not fit unsigned label types (the range check above bounds the values).
        return pc.fill_null(column.cast(pa.int64()), -1).to_numpy()

    def _assemble(self, parts: list["_Rows"], extra: tuple) -> Batch:
        rows = parts[0] if len(parts) == 1 else _Rows.concat(parts)
        inputs = rows.inputs if rows.inputs is not None else self.input_spec.to_tensor(rows.input_table, where="input")
        return Batch(inputs, rows.labels, rows.targets, {name: _extra_value(rows.extra.column(name)) for name in extra})


def _targets(column: pa.ChunkedArray, num_classes: int, path: str) -> np.ndarray:
    """[rows, C] in the stored dtype, zero-copy from Arrow where the column is one chunk."""
    if column.null_count:
        raise UserError(f"{path}: {column.null_count} rows have null target logits; the transfer set is damaged, regenerate it")
    # flatten(), not .values: .values ignores slice offsets (measured on these machines).
    chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
    values = (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)).reshape(-1, num_classes)
    if np.isnan(values).any() or np.isposinf(values).any():
        raise UserError(f"{path}: target logits contain NaN or +inf; the transfer set is damaged, regenerate it")
    return values


class _WindowData:
    """One window's rows as tensors, in local-row order (its row groups concatenated)."""

    def __init__(self, rows: int, num_classes: int | None) -> None:
        self.rows = rows
        self.labels = torch.empty(rows, dtype=torch.int64)
        self.targets = torch.empty((rows, num_classes), dtype=torch.float32) if num_classes else None
        self.inputs: torch.Tensor | None = None  # float32 [rows, *shape] (fixed-size inputs)
        self.input_table: pa.Table | None = None  # input columns, for inputs through a transform
        self.extra_table: pa.Table | None = None

    def put_inputs(self, rows: slice, values: torch.Tensor) -> None:
        if self.inputs is None and len(values) == self.rows:
            self.inputs = values  # a one-row-group window: keep the converted tensor, no copy
            return
        if self.inputs is None:
            self.inputs = torch.empty((self.rows, *values.shape[1:]), dtype=values.dtype)
        self.inputs[rows] = values

    def take(self, local: np.ndarray) -> "_Rows":
        index = torch.from_numpy(local)
        arrow_index = pa.array(local) if self.input_table is not None or self.extra_table is not None else None
        return _Rows(
            labels=self.labels.index_select(0, index),
            targets=self.targets.index_select(0, index) if self.targets is not None else None,
            inputs=self.inputs.index_select(0, index) if self.inputs is not None else None,
            input_table=self.input_table.take(arrow_index) if self.input_table is not None else None,
            extra=self.extra_table.take(arrow_index) if self.extra_table is not None else None,
        )


@dataclass
class _Rows:
    """Gathered rows of one batch (or of the part of it that one window holds)."""

    labels: torch.Tensor
    targets: torch.Tensor | None
    inputs: torch.Tensor | None
    input_table: pa.Table | None
    extra: pa.Table | None

    @staticmethod
    def concat(parts: list["_Rows"]) -> "_Rows":
        def cat(values):
            return None if values[0] is None else torch.cat(values)

        def cat_tables(values):
            return None if values[0] is None else pa.concat_tables(values).combine_chunks()

        return _Rows(cat([p.labels for p in parts]), cat([p.targets for p in parts]), cat([p.inputs for p in parts]),
                     cat_tables([p.input_table for p in parts]), cat_tables([p.extra for p in parts]))


def _extra_value(column: pa.ChunkedArray) -> Any:
    """A columns_extra column of one batch: a tensor for numbers, a list otherwise."""
    kind = column.type
    try:
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            if not column.null_count:
                return torch.from_numpy(column.to_numpy().copy())  # a writable copy: Arrow memory is read-only
        elif pa.types.is_fixed_size_list(kind) and (pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)):
            if not column.null_count:
                flat = np.concatenate([c.flatten().to_numpy(zero_copy_only=False) for c in column.chunks])
                return torch.from_numpy(flat.reshape(len(column), kind.list_size))
    except TypeError:  # a dtype torch has no tensor for (e.g. uint32 on old torch)
        pass
    return column.to_pylist()


def _label_stats(pf: pq.ParquetFile, i: int, label_column: str, path: str) -> tuple[int, int, int | None, int | None]:
    """(rows, nulls, min, max) of one row group's labels: from the Parquet statistics when
    the file has them, else from reading that one column of that row group."""
    group = pf.metadata.row_group(i)
    for j in range(group.num_columns):
        chunk = group.column(j)
        if chunk.path_in_schema == label_column:
            stats = chunk.statistics
            if stats is not None and stats.has_min_max and stats.has_null_count:
                return group.num_rows, stats.null_count, int(stats.min), int(stats.max)
            break
    try:
        column = pf.read_row_group(i, columns=[label_column]).column(0)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UserError(f"{path}: row group {i} cannot be read ({first_line(error)}); the file is damaged or truncated: restore or regenerate it") from None
    if column.null_count == len(column):
        return group.num_rows, column.null_count, None, None
    bounds = pc.min_max(column)
    return group.num_rows, column.null_count, bounds["min"].as_py(), bounds["max"].as_py()


def parquet_files(paths) -> list[str]:
    """Parquet files named by paths, directories (every *.parquet below, skipping
    _hidden and .hidden entries) and globs; in a stable order, without repeats."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise UserError("no data path given; pass one or more Parquet files, directories or globs")
    files: list[str] = []
    for raw in map(str, paths):
        matches = sorted(glob.glob(raw, recursive=True)) if any(c in raw for c in "*?[") else [raw] if os.path.exists(raw) else []
        if not matches:
            raise UserError(f"{raw} does not exist (or the glob matches nothing); check the path")
        for match in matches:
            if os.path.isdir(match):
                found = sorted(str(f) for f in Path(match).rglob("*.parquet")
                               if f.is_file() and not any(part.startswith(("_", ".")) for part in f.relative_to(match).parts))
                if not found:
                    raise UserError(f"directory {match} has no .parquet files; point at the Parquet data")
                files += found
            else:
                files.append(match)
    return list(dict.fromkeys(files))


class StreamDataset(torch.utils.data.IterableDataset):
    """One rank's epoch for `DataLoader(dataset, batch_size=None, num_workers=N)`.

    Each worker yields a disjoint contiguous range of the rank's batches (order.py);
    `start_batch` counts batches the DataLoader had yielded, so resume with the same
    num_workers the checkpoint was written with. With num_workers=0 this is exactly
    `source.epoch(...)`."""

    def __init__(self, source: StreamSource, *, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, drop_last: bool = False, columns_extra: tuple = ()) -> None:
        super().__init__()
        self.source = source
        self.args = dict(batch_size=batch_size, seed=seed, epoch=epoch, start_batch=start_batch, shuffle=shuffle,
                         rank=rank, world_size=world_size, drop_last=drop_last, columns_extra=tuple(columns_extra))
        self._num_batches = source.num_batches(batch_size, rank, world_size, drop_last)
        if not 0 <= start_batch <= self._num_batches:
            raise UserError(f"resume position {start_batch} is outside this epoch's {self._num_batches} batches; the data, batch size or world size changed since the checkpoint")

    def __len__(self) -> int:
        return self._num_batches - self.args["start_batch"]

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.source._batches(**self.args, worker=worker, num_workers=num_workers)
