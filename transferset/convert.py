"""Arrays on disk (.npy, .npz, MNIST-style IDX) -> a Parquet *source* for generate and train.

The data flow, one module per stage:

    transferset/arrays.py         read the files, strictly (truncation, magic, trailing bytes)
    here                          check the arrays, pick the rows (--rows, --exclude-class),
                                  decide columns and dtype, record provenance
    transferset/source_writer.py  the source's Parquet layout; encode one row group at a time
    transferset/io.atomic_write   publish: a temp file in the same folder, fsync, rename

so a `.parquet` at the output path is always whole, and a write the file system
refuses (disk full, read-only) is a one-line error naming the file.

Memory: the input array is memory-mapped (.npy, plain IDX) or held once as
decompressed bytes (.gz IDX, .npz members); on top of that only one row group of
converted rows exists at a time.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import numpy as np
import pyarrow as pa

from transferset.arrays import load_array
from transferset.errors import UserError
from transferset.io import atomic_write, file_sha256
from transferset.source_writer import ROW_COLUMN, output_schema, write_row_groups

DTYPES = ("float16", "float32", "float64")


# -- options and checks -----------------------------------------------------------


def parse_rows(text: str | None) -> tuple[int | None, int | None] | None:
    """'START:STOP' (either end may be empty) -> (start, stop); bounds are checked later."""
    if text is None:
        return None
    start_text, sep, stop_text = text.partition(":")
    try:
        if not sep or ":" in stop_text:
            raise ValueError
        start = int(start_text) if start_text.strip() else None
        stop = int(stop_text) if stop_text.strip() else None
    except ValueError:
        raise UserError(f"--rows {text!r} must look like START:STOP, e.g. 0:1000 or 50000:") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise UserError(f"--rows {text!r}: negative positions are not supported; count from 0")
    return start, stop


@dataclass(frozen=True)
class ConvertOptions:
    input_column: str = "pixels"
    label_column: str = "label"
    rows: tuple[int | None, int | None] | None = None  # [start, stop) of the input rows
    exclude_classes: tuple[int, ...] = ()
    drop_labels: bool = False
    row_group_rows: int = 32768
    dtype: str | None = None  # None keeps the array's dtype; else one of DTYPES
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.row_group_rows < 1:
            raise UserError(f"--row-group-rows {self.row_group_rows} must be at least 1")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise UserError(f"--dtype {self.dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        names = [self.input_column, self.label_column, ROW_COLUMN]
        if not all(names[:2]):
            raise UserError("--input-column and --label-column must not be empty")
        if len(set(names)) < 3:
            raise UserError(f"--input-column {self.input_column!r}, --label-column {self.label_column!r} and {ROW_COLUMN!r} must all differ")


@dataclass(frozen=True)
class ConvertResult:
    path: Path
    rows: int
    excluded_rows: int
    shape: tuple[int, ...]  # per row, in stored order
    dtype: str
    labelled: bool
    input_shape_hint: str  # for generate's --input-shape
    hint_note: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def input_shape_hint(shape: tuple[int, ...]) -> tuple[str, str | None]:
    """generate's --input-shape for rows of `shape`, plus a note when it matters how."""
    if len(shape) == 2:  # [N, H, W] images: one channel
        return f"1,{shape[0]},{shape[1]}", None
    text = ",".join(str(d) for d in shape)
    if len(shape) == 3 and shape[-1] in (1, 3, 4) and shape[0] > 4:
        return text, (
            "rows are stored channels-last (H,W,C) and --input-shape keeps the stored order; "
            "a model that wants C,H,W needs a --transform, or transpose the array before converting"
        )
    return text, None


def check_labels(labels: np.ndarray, where: str, images_rows: int, images_where: str = "the images") -> np.ndarray:
    """Labels as an in-memory int64 vector of class indices, or a UserError."""
    if labels.ndim != 1:
        raise UserError(f"labels in {where} have shape {labels.shape}; they must be 1-D (one class index per row), e.g. labels.reshape(-1)")
    if labels.dtype.kind in "USO":  # strings (or objects): class names, not indices
        raise UserError(f"labels in {where} are strings ({labels.dtype.str}); they must be integer class indices: map each class name to 0..C-1 first")
    if not np.issubdtype(labels.dtype, np.integer):
        kind = labels.dtype.newbyteorder("=").name
        raise UserError(f"labels in {where} are {kind}; they must be integer class indices (cast them, e.g. labels.astype('int64'))")
    if labels.shape[0] != images_rows:
        raise UserError(f"{where} has {labels.shape[0]:,} labels but {images_where} has {images_rows:,} rows; pair the right files")
    labels = np.asarray(labels, dtype=np.int64)
    bad = np.flatnonzero((labels < 0) | (labels > np.iinfo(np.int32).max))
    if bad.size:
        raise UserError(f"labels in {where}: row {int(bad[0])} has label {int(labels[bad[0]])}; labels must be class indices 0..2^31-1")
    return labels


def _check_images(images: np.ndarray, where: str) -> None:
    if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
        raise UserError(f"{where} holds {images.dtype} values, not plain numbers; convert reads integer or float arrays (cast it, e.g. to uint8 or float32)")
    if images.ndim < 2:
        raise UserError(f"{where} has shape {images.shape}; images must be [rows, ...] (reshape to (N, 1) if each row is one value)")
    if images.shape[0] == 0 or math.prod(images.shape[1:]) == 0:
        raise UserError(f"{where} is empty (shape {images.shape}); there is nothing to convert")


@dataclass(frozen=True)
class RowSelection:
    """The input rows to write: [start, stop), minus excluded classes when `indices` is set."""

    start: int
    stop: int
    indices: np.ndarray | None  # explicit row indices, or None for the whole range
    excluded: int  # rows of [start, stop) left out by --exclude-class

    @property
    def count(self) -> int:
        return self.stop - self.start if self.indices is None else int(self.indices.size)

    def blocks(self, images: np.ndarray, rows_per_block: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(row ids [n], images[row ids]) per block of at most `rows_per_block` rows.

        A plain range is sliced, so a memory-mapped array is read one block at a time.
        """
        for first in range(0, self.count, rows_per_block):
            last = min(first + rows_per_block, self.count)
            if self.indices is None:
                row_ids = np.arange(self.start + first, self.start + last, dtype=np.int64)
                yield row_ids, images[self.start + first : self.start + last]
            else:
                row_ids = self.indices[first:last]
                yield row_ids, images[row_ids]


def select_rows(n: int, labels: np.ndarray | None, options: ConvertOptions) -> RowSelection:
    """The rows of an input with `n` rows that --rows and --exclude-class keep."""
    start, stop = options.rows if options.rows is not None else (None, None)
    start = 0 if start is None else start
    stop = n if stop is None else stop
    if stop > n or start >= stop:
        raise UserError(f"--rows {start}:{stop} does not select rows of an input with {n:,} rows; use START < STOP <= {n}")
    if not options.exclude_classes:
        return RowSelection(start, stop, None, 0)
    keep = ~np.isin(labels[start:stop], np.asarray(options.exclude_classes, dtype=np.int64))
    indices = np.flatnonzero(keep) + start
    if indices.size == 0:
        raise UserError(f"--exclude-class {list(options.exclude_classes)} leaves no rows in {start}:{stop}; exclude fewer classes")
    return RowSelection(start, stop, indices, int(stop - start - indices.size))


# -- writing ----------------------------------------------------------------------


def write_source(
    images: np.ndarray,
    labels: np.ndarray | None,
    out: str | os.PathLike,
    options: ConvertOptions = ConvertOptions(),
    provenance: dict[str, Any] | None = None,
    where: str = "images",
    labels_where: str = "labels",
    quiet: bool = True,
) -> ConvertResult:
    """Write `images` [N, ...] (and `labels` [N] or None) as a Parquet source at `out`.

    `provenance` (e.g. source_files and sha256) is merged into the metadata;
    `where` and `labels_where` name the arrays in error messages.
    Reads `images` one row group at a time, so a memory-mapped array stays on disk.
    """
    out = Path(out)
    check_out_folder(out)
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name like {out / 'source.parquet'}")
    if out.exists() and not options.overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it")
    _check_images(images, where)
    if labels is not None:
        labels = check_labels(labels, labels_where, images.shape[0], where)
    elif options.exclude_classes:
        raise UserError("--exclude-class needs labels; pass --labels (or --labels-key)")
    selection = select_rows(images.shape[0], labels, options)

    shape = tuple(int(d) for d in images.shape[1:])
    dtype = np.dtype(options.dtype) if options.dtype else images.dtype.newbyteorder("=")
    labelled = labels is not None and not options.drop_labels
    hint, note = input_shape_hint(shape)
    metadata = {
        "shape": list(shape),
        "dtype": dtype.name,
        "source_dtype": images.dtype.newbyteorder("=").name,
        "input_column": options.input_column,
        "label_column": options.label_column if labelled else None,
        "id_column": ROW_COLUMN,
        "rows": [selection.start, selection.stop],
        "excluded_classes": sorted(set(options.exclude_classes)),
        "num_rows": selection.count,
        "input_shape": hint,
        **(provenance or {}),
    }
    label_column = options.label_column if labelled else None
    schema = output_schema(options.input_column, label_column, pa.from_numpy_dtype(dtype), math.prod(shape), metadata)

    def write(sink: BinaryIO) -> None:
        blocks = selection.blocks(images, options.row_group_rows)
        write_row_groups(sink, schema, blocks, labels if labelled else None, dtype, selection.count, where, quiet)

    out.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temp_files(out.parent)
    # atomic_write writes `.NAME.tmp-PID` beside `out` (hidden: no reader takes it for a
    # source) and renames it into place only when whole.
    atomic_write(out, write)
    return ConvertResult(out, selection.count, selection.excluded, shape, dtype.name, labelled, hint, note, metadata)


def check_out_folder(out: Path) -> None:
    """Refuse an --out below a regular file (`data.npy/x.parquet`) before any work."""
    for folder in out.parents:
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise UserError(f"--out {str(out)!r}: {str(folder)!r} is a file, not a folder; give a path in a folder")
            return


# A temp file atomic_write leaves when its process is killed: `.NAME.parquet.tmp-PID`.
_TEMP_FILE = re.compile(r"^\..+\.parquet\.tmp-(\d+)$")


def remove_dead_temp_files(folder: Path) -> list[Path]:
    """Delete the Parquet temp files in `folder` whose writer process is gone (a
    convert killed mid-write), so that kills do not pile up hidden copies of the data.
    A temp file of a live process (another convert writing now) is left alone."""
    removed = []
    for path in folder.iterdir():
        found = _TEMP_FILE.match(path.name)
        if found and int(found.group(1)) != os.getpid() and not _alive(int(found.group(1))) and path.is_file():
            try:
                path.unlink()
            except FileNotFoundError:  # another convert cleaned it up first
                continue
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process (or a number we cannot ask about): keep its file
    return True


# -- files in, file out -----------------------------------------------------------


def convert_files(
    images: str | os.PathLike,
    out: str | os.PathLike,
    labels: str | os.PathLike | None = None,
    images_key: str | None = None,
    labels_key: str | None = None,
    options: ConvertOptions = ConvertOptions(),
    quiet: bool = True,
) -> ConvertResult:
    """Load the files named on the command line and write them as a source at `out`."""
    out_path = Path(out)
    check_out_folder(out_path)
    inputs = [Path(images)] + ([Path(labels)] if labels is not None else [])
    if out_path.exists() and any(p.exists() and out_path.resolve() == p.resolve() for p in inputs):
        raise UserError(f"--out {out_path} is one of the input files; write to a new file")
    if out_path.exists() and not options.overwrite:
        raise UserError(f"--out {out_path} already exists; pass --overwrite to replace it")
    if options.drop_labels and labels is None:
        raise UserError("--drop-labels needs labelled input (--labels or --labels-key); without labels the output is already unlabelled")
    image_array = load_array(images, images_key, "--images")
    label_array = load_array(labels, labels_key, "--labels") if labels is not None else None
    where = f"{images}" + (f"[{images_key}]" if images_key else "")
    labels_where = f"{labels}" + (f"[{labels_key}]" if labels_key else "")
    files = list(dict.fromkeys(str(p) for p in inputs))  # an .npz may hold both arrays
    provenance: dict[str, Any] = {
        "source_files": files,
        "sha256": {name: file_sha256(Path(name)) for name in files},
        "keys": {"images": images_key, "labels": labels_key},
    }
    return write_source(image_array, label_array, out_path, options, provenance, where, labels_where, quiet)
