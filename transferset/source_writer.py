"""The Parquet layout of a converted source, and the loop that encodes its row groups.

A source is what `generate` and `train` read: one input column of fixed-size
numeric lists, an optional nullable int32 label column, and a `row` column with
each row's index in the original files (a stable `--id-column`):

    <input>  fixed_size_list<element dtype>[prod(shape[1:])], not null
    <label>  int32, nullable (absent for an unlabelled source)
    row      int64, not null

The per-row shape, the source files and their sha256 ride in the Parquet
key-value metadata under `transferset.convert` (JSON).

This module only encodes: which rows, which columns and which dtype are decided
by `transferset.convert`, and the bytes go to a file object that
`transferset.io.atomic_write` publishes. Only one row group of converted rows
exists in memory at a time.
"""

from __future__ import annotations

import json
from typing import BinaryIO, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transferset.errors import UserError
from transferset.progress import progress

METADATA_KEY = b"transferset.convert"
ROW_COLUMN = "row"


def output_schema(input_column: str, label_column: str | None, value_type: pa.DataType, size: int, metadata: dict) -> pa.Schema:
    """The source's schema: inputs of `size` values each, labels when `label_column` is
    given, row ids; `metadata` (JSON-able) under METADATA_KEY."""
    # Non-nullable inputs: FixedSizeListArray.flatten() silently drops null rows (measured on these machines).
    fields = [pa.field(input_column, pa.list_(pa.field("element", value_type, nullable=False), size), nullable=False)]
    if label_column is not None:
        fields.append(pa.field(label_column, pa.int32(), nullable=True))
    fields.append(pa.field(ROW_COLUMN, pa.int64(), nullable=False))
    encoded = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    return pa.schema(fields, metadata={METADATA_KEY: encoded})


def write_row_groups(
    sink: BinaryIO,
    schema: pa.Schema,
    blocks: Iterable[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray | None,
    dtype: np.dtype,
    total_rows: int,
    where: str,
    quiet: bool = True,
) -> None:
    """Write one row group per (row_ids [n], block [n, *shape]) of `blocks` to `sink`.

    `schema` comes from `output_schema` (with a label column exactly when `labels`,
    all labels [N] indexed by row id, is given); `dtype` is the stored element type;
    `where` names the images in errors; `total_rows` sizes the progress bar.
    """
    input_column = schema.field(0).name
    label_column = schema.field(1).name if labels is not None else None
    size = schema.field(0).type.list_size
    with pq.ParquetWriter(
        sink,
        schema,
        compression="zstd",
        use_dictionary=_dictionary_columns(input_column, label_column, dtype),
        write_statistics=[ROW_COLUMN] + ([label_column] if label_column else []),
    ) as writer, progress("convert", total=total_rows, quiet=quiet) as bar:
        for row_ids, block in blocks:
            writer.write_batch(_batch(schema, block, row_ids, labels, dtype, size, where), row_group_size=len(row_ids))
            bar.advance(len(row_ids))


def _dictionary_columns(input_column: str, label_column: str | None, dtype: np.dtype) -> list[str]:
    """Columns worth dictionary encoding (a list of leaf paths, as pyarrow matches them).

    Labels: a handful of distinct values. Inputs: only 8-bit integers, whose at most
    256 values always fit the dictionary; measured on MNIST train (60k x 784 uint8),
    zstd alone 14.7 MB, with a dictionary 10.6 MB, read speed the same (~0.3 s).
    Wider types overflow the dictionary page and fall back after paying for the
    attempt (floats: bigger and slower, measurements on these machines), so they stay plain.
    """
    columns = [label_column] if label_column else []
    if dtype.itemsize == 1:
        columns.append(f"{input_column}.list.element")
    return columns


def _batch(schema: pa.Schema, block: np.ndarray, row_ids: np.ndarray, labels: np.ndarray | None, dtype: np.dtype, size: int, where: str) -> pa.RecordBatch:
    """One row group: block [n, *shape] -> [n, size] in native `dtype`, checked for NaN/Inf."""
    with np.errstate(over="ignore", invalid="ignore"):
        values = np.ascontiguousarray(block.reshape(len(block), size), dtype=dtype)
    if np.issubdtype(dtype, np.floating):
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            bad = int(row_ids[np.flatnonzero(~finite)[0]])
            cause = "is out of range for " + dtype.name if np.isfinite(block[np.flatnonzero(~finite)[0]]).all() else "has NaN/Inf values"
            raise UserError(f"{where}: row {bad} {cause}; clean the array (or drop the row with --rows) before converting")
    columns = [pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), type=schema.field(0).type)]
    if labels is not None:
        columns.append(pa.array(labels[row_ids].astype(np.int32), type=pa.int32()))
    columns.append(pa.array(row_ids, type=pa.int64()))
    return pa.RecordBatch.from_arrays(columns, schema=schema)
