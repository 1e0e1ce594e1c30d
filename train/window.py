"""One shuffle window read from Parquet and converted once into tensors.

stream.py plans which windows an epoch reads (order.py) and cuts batches out of
them; this module does the reading and the conversion. For each window the reader

* reads its row groups one at a time (`read_window`), each in parts of ~PART_BYTES
  (`_row_group_parts`; never a whole file; files opened with `pre_buffer=False`: the
  default pre-buffering holds about the whole file in memory, measurements on these
  machines); a set made with `--inputs reference` reads each part's inputs from its
  source rows (`SourceJoin`, transferset/format/references.py);
* converts each part once into the window's tensors: inputs with the set's
  `InputSpec` (the conversion the teachers saw) to float32 [rows, *shape], or kept as
  their stored 8/16-bit integers (a quarter of the bytes for uint8 pixels) and converted
  per batch by stream.py (token inputs: int64 [rows, 3, L], `pack_tokens`), target
  targets through the set's codec (`codec.decode`, then float32 in `put_targets`), labels int64 [rows] (-1 = none);
* then gives a batch's rows by `index_select` (`WindowData.take`), which costs what
  indexing tensors already in memory costs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from train import order
from transferset import io
from transferset.errors import UserError, first_line
from transferset.format.references import SOURCE_ROW, SourceJoin
from transferset.format.schema import SOURCE
from transferset.inputs import InputSpec
from transferset.labels import LabelStats, check_label_range
from transferset.progress import counted

if TYPE_CHECKING:
    from transferset.format.codecs import TargetCodec
    from transferset.format.provenance import Provenance


@dataclass(frozen=True)
class RowGroup:
    path: str
    index: int  # row group index inside the file
    rows: int
    nbytes: int  # uncompressed Parquet size of all its columns (footer metadata)


def open_parquet(path: str) -> pq.ParquetFile:
    """A shard or data file, streamed with its page checksums checked (transferset/io.py)."""
    return io.open_parquet(path, "the file is damaged or truncated: restore or regenerate it")


def read_window(window: order.Window, extra: tuple, *, row_groups: list[RowGroup], input_spec: InputSpec, label_column: str,
                codec: "TargetCodec | None", provenance: "Provenance | None", num_classes: int, token_rows: bool = False,
                references: dict[str, str] | None = None) -> "WindowData":
    """Read a window's row groups (indices into `row_groups`) one at a time and convert
    each straight into the window's tensors (peak: the window plus one row group in
    Arrow form). `codec` None: plain labelled data, no targets. `token_rows`: inputs as
    `pack_tokens` (for a causal-LM student); `label_column` None: no labels (-1).
    `references`: a set made with `--inputs reference` ({recorded source path: file}):
    each row group's inputs are read from its source rows (format/references.py)."""
    spec = input_spec
    target_columns = codec.decode_columns(provenance) if codec else []
    join = SourceJoin(references, list(spec.columns)) if references is not None else None
    input_names = [SOURCE, SOURCE_ROW] if join else list(spec.columns)
    names = list(dict.fromkeys([*input_names, *([label_column] if label_column else []), *target_columns, *extra]))
    data = WindowData(window.rows)
    if codec is not None and codec.kind == "views":  # one stored view per row and epoch (train/views.py)
        from train.views import ViewReplay

        data.views = ViewReplay(provenance)
        data.positions = _set_positions(window, row_groups)
    input_tables, extra_tables, files, offset = [], [], {}, 0
    for g in window.row_groups:
        ref = row_groups[g]
        pf = files.get(ref.path) or files.setdefault(ref.path, open_parquet(ref.path))
        where = f"{ref.path} row group {ref.index}"
        read = 0
        for table in _row_group_parts(pf, ref, names):
            rows = slice(offset + read, offset + read + table.num_rows)
            inputs = join.inputs(table, where) if join else table
            # Written through NumPy views: Arrow's buffers are read-only, and the assignment
            # is the one copy (and the one float16 -> float32 conversion) these columns get.
            if label_column is None:  # a token source without labels (eval --data of a per-token run)
                data.labels[rows] = -1
            else:
                data.labels.numpy()[rows] = _labels(table.column(label_column), label_column, num_classes, ref.path)
            if codec:
                data.put_targets(rows, codec.decode(table.select(target_columns), provenance, ref.path))
            if spec.transform is None:
                # The InputSpec conversion, once per row group instead of once per batch:
                # batches then cost an index_select, as for data already in memory. 8/16-bit
                # integer inputs (pixels) stay in their stored type, 1/4 of float32's bytes,
                # and become float32 per batch (stream.py); views sets replay on float32 inputs.
                stored = spec.stored_tensor(inputs, where) if data.views is None and not token_rows else None
                if stored is not None:
                    data.put_inputs(rows, stored)
                else:
                    data.put_inputs(rows, pack_tokens(spec, inputs, where) if token_rows else spec.to_tensor(inputs, where=where))
            else:
                input_tables.append(inputs.select(list(spec.columns)))
            if extra:
                extra_tables.append(table.select(list(extra)))
            read += table.num_rows
            del table, inputs
        if read != ref.rows:
            raise UserError(f"{ref.path}: row group {ref.index} has {counted(read, 'row')}, its footer says {ref.rows:,}; the file is damaged: restore or regenerate it")
        offset += ref.rows
    if input_tables:
        data.input_table = pa.concat_tables(input_tables).combine_chunks()
    if extra_tables:
        data.extra_table = pa.concat_tables(extra_tables).combine_chunks()
    return data


# Rows decoded at a time inside a row group: about this many bytes of the row group's
# uncompressed data. Decoding a whole 32,768-row group of MNIST pixels at once held ~100 MB
# of int32 values (Parquet stores uint8 as INT32) besides the result; in parts of this size
# one streamed epoch of a 240k-row set peaked at 607 instead of 1,068 MB (same batches).
PART_BYTES = 16 << 20
PART_MIN_ROWS = 256


def _row_group_parts(pf: pq.ParquetFile, ref: RowGroup, names: list[str]) -> Iterator[pa.Table]:
    """One row group's columns as consecutive tables of about PART_BYTES each."""
    rows = max(PART_MIN_ROWS, min(ref.rows, PART_BYTES * ref.rows // max(ref.nbytes, 1)))
    batches = pf.iter_batches(batch_size=rows, row_groups=[ref.index], columns=names, use_threads=False)
    try:
        while True:
            try:  # only the read is guarded: an error of the caller's, raised at the yield, is its own
                batch = next(batches, None)
            except (pa.ArrowException, OSError, ValueError) as error:
                raise UserError(f"{ref.path}: row group {ref.index} cannot be read ({first_line(error)}); the file is damaged or truncated: restore or regenerate it") from None
            if batch is None:
                return
            yield pa.Table.from_batches([batch])
    finally:
        # Arrow's reader released now, not at interpreter shutdown, where a reader that
        # outlived Arrow's pools can abort the process (apache/arrow#34314)
        batches.close()


def _set_positions(window: order.Window, row_groups: list[RowGroup]) -> torch.Tensor:
    """int64 [rows]: each window row's position in the whole set (row groups in their listed order)."""
    first = np.cumsum([0] + [g.rows for g in row_groups])
    return torch.from_numpy(np.concatenate([np.arange(first[g], first[g] + row_groups[g].rows) for g in window.row_groups]))


def pack_tokens(spec: InputSpec, table: pa.Table, where: str) -> torch.Tensor:
    """Token inputs packed as one int64 [rows, 3, L] tensor: input_ids, attention_mask,
    target_mask (0/1). One tensor, so that a window's rows are gathered by the same
    index_select as every other input (train/stream.py Batch.input_ids etc. unpack it)."""
    named = spec.to_inputs(table, where)
    return torch.stack([named[name].long() for name in spec.columns], dim=1)


def _labels(column: pa.ChunkedArray, label_column: str, num_classes: int, path: str) -> np.ndarray:
    """int64 [rows], -1 for null; refuses ids outside [0, num_classes)."""
    stats = LabelStats().update(column)
    check_label_range(stats.lo, stats.hi, num_classes,
                      f"{path}: label {{label}} in column {label_column!r} is outside [0, {num_classes}); fix the labels or the number of classes")
    # int64 first: -1 does not fit unsigned label types (the range check above bounds the values).
    return pc.fill_null(column.cast(pa.int64()), -1).to_numpy()


def _window_dtype(values: np.ndarray) -> torch.dtype:
    """float32 for every float target (losses run in float32), the stored type otherwise (ids)."""
    if np.issubdtype(values.dtype, np.floating):
        return torch.float32
    return torch.from_numpy(np.zeros(0, values.dtype)).dtype


class WindowData:
    """One window's rows as tensors, in local-row order (its row groups concatenated)."""

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.labels = torch.empty(rows, dtype=torch.int64)
        self.targets: dict[str, torch.Tensor] | None = None  # the codec's decoded targets, [rows, ...] each
        self.inputs: torch.Tensor | None = None  # float32 [rows, *shape], or the stored 8/16-bit integers (InputSpec.stored_tensor)
        self.input_table: pa.Table | None = None  # input columns, for inputs through a transform
        self.extra_table: pa.Table | None = None
        self.views = None  # train.views.ViewReplay for a views set: take() picks and replays one view per row
        self.positions: torch.Tensor | None = None  # int64 [rows], each row's position in the set (views only)

    def put_inputs(self, rows: slice, values: torch.Tensor) -> None:
        if self.inputs is None and len(values) == self.rows:
            self.inputs = values  # a one-row-group window: keep the converted tensor, no copy
            return
        if self.inputs is None:
            self.inputs = torch.empty((self.rows, *values.shape[1:]), dtype=values.dtype)
        self.inputs[rows] = values

    def put_targets(self, rows: slice, decoded: dict[str, np.ndarray]) -> None:
        """Copy one row group's decoded targets into the window's tensors. Floats become
        float32 here: the one copy (and the one float16 -> float32 conversion) they get."""
        if self.targets is None:
            self.targets = {name: torch.empty((self.rows, *values.shape[1:]), dtype=_window_dtype(values))
                            for name, values in decoded.items()}
        for name, values in decoded.items():
            self.targets[name].numpy()[rows] = values  # through a NumPy view: Arrow memory is read-only

    def take(self, local: np.ndarray, window: order.Window | None = None) -> "Rows":
        """The rows at `local`; for a views set, each with the view it takes in `window`'s epoch."""
        index = torch.from_numpy(local)
        arrow_index = pa.array(local) if self.input_table is not None or self.extra_table is not None else None
        rows = Rows(
            labels=self.labels.index_select(0, index),
            targets={k: v.index_select(0, index) for k, v in self.targets.items()} if self.targets is not None else None,
            inputs=self.inputs.index_select(0, index) if self.inputs is not None else None,
            input_table=self.input_table.take(arrow_index) if self.input_table is not None else None,
            extra=self.extra_table.take(arrow_index) if self.extra_table is not None else None,
        )
        if self.views is not None:
            seed, epoch = (window.seed, window.epoch) if window is not None else (0, 0)
            rows = self.views.pick(rows, self.positions.index_select(0, index), seed, epoch)
        return rows


@dataclass
class Rows:
    """Gathered rows of one batch (or of the part of it that one window holds)."""

    labels: torch.Tensor
    targets: dict[str, torch.Tensor] | None
    inputs: torch.Tensor | None
    input_table: pa.Table | None
    extra: pa.Table | None

    @staticmethod
    def concat(parts: list["Rows"]) -> "Rows":
        def cat(values):
            return None if values[0] is None else torch.cat(values)

        def cat_tables(values):
            return None if values[0] is None else pa.concat_tables(values).combine_chunks()

        def cat_dicts(values):
            return None if values[0] is None else {k: torch.cat([v[k] for v in values]) for k in values[0]}

        return Rows(cat([p.labels for p in parts]), cat_dicts([p.targets for p in parts]), cat([p.inputs for p in parts]),
                    cat_tables([p.input_table for p in parts]), cat_tables([p.extra for p in parts]))


def extra_value(column: pa.ChunkedArray) -> Any:
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
