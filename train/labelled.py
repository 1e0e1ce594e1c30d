"""Opening plain labelled Parquet (train --data, train --eval, eval --data).

Files, directories and globs expand by the one rule every command uses
(`transferset.io.expand_parquet_paths`: each file once, by real path). Labels are
checked from the footers' statistics where the files have them (no data read),
else by reading the label column one row group at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from train.window import RowGroup, open_parquet
from transferset.errors import UserError, first_line
from transferset.inputs import InputSpec
from transferset.labels import LabelStats, check_label_range
from transferset.io import expand_parquet_paths


@dataclass(frozen=True)
class LabelledFiles:
    """What opening labelled Parquet found (StreamSource.open_labelled builds on it)."""

    row_groups: list[RowGroup]
    num_labelled: int
    num_classes: int
    columns: frozenset[str]  # the columns every file has


def scan_labelled(paths, input_spec: InputSpec, label_column: str, num_classes: int | None, what: str) -> LabelledFiles:
    """Check every file's schema and labels; `num_classes` None means largest label + 1.
    `what` names the flag the paths came from in errors ("--data", "--eval")."""
    files = expand_parquet_paths(paths, what)
    row_groups, labelled, high, columns = [], 0, None, None
    for path in files:
        pf = open_parquet(path)
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
            row_groups.append(RowGroup(path, i, rows, pf.metadata.row_group(i).total_byte_size))
            labelled += rows - nulls
            if lo is not None:
                check_label_range(lo, None, None, f"{path}: label {{label}} in column {label_column!r} is negative; class ids must be 0..C-1")
                check_label_range(lo, hi, num_classes, f"{path}: label {{label}} in column {label_column!r} is outside [0, {num_classes}) for "
                                  f"{num_classes} classes; fix the labels (or --num-classes when training on --data)")
                high = hi if high is None else max(high, hi)
    if sum(g.rows for g in row_groups) == 0:
        raise UserError(f"{', '.join(map(str, paths))}: no rows; point at non-empty Parquet files")
    if high is None:
        raise UserError(f"{', '.join(map(str, paths))}: label column {label_column!r} has no labels (all null); fix --label-column")
    if num_classes is None:
        num_classes = high + 1
        if num_classes < 2:
            raise UserError(f"labels in {label_column!r} only take the value 0; pass the number of classes explicitly (--num-classes)")
    return LabelledFiles(row_groups, labelled, num_classes, frozenset(columns))


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
    stats = LabelStats().update(column)
    return group.num_rows, column.null_count, stats.lo, stats.hi
