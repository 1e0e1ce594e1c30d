"""Arrays on disk (.npy, .npz, MNIST-style IDX) -> a Parquet *source*.

A source is what `generate` and `train` read: one input column of fixed-size
numeric lists, an optional nullable int32 label column, and a `row` column with
each row's index in the original files (a stable `--id-column`):

    <input>  fixed_size_list<element dtype>[prod(shape[1:])], not null
    <label>  int32, nullable (absent for an unlabelled source)
    row      int64, not null

The per-row shape, the source files and their sha256 ride in the Parquet
key-value metadata under `transferset.convert` (JSON).

Memory: the input array is memory-mapped (.npy, plain IDX) or held once as
decompressed bytes (.gz IDX, .npz members); on top of that only one row group of
converted rows exists at a time. The file is written under a temporary name and
renamed when complete, so a `.parquet` at the output path is always whole.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transferset.errors import UserError
from transferset.manifest import file_sha256
from transferset.progress import progress

METADATA_KEY = b"transferset.convert"
ROW_COLUMN = "row"
DTYPES = ("float16", "float32", "float64")
SUPPORTED = ".npy, .npz (name the array with a key), IDX (e.g. train-images-idx3-ubyte or x.idx, plain or .gz)"

# IDX type code -> element type. Multi-byte values are big-endian on disk.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


# -- reading arrays ---------------------------------------------------------------


def file_kind(path: Path) -> str:
    """'npy', 'npz' or 'idx' from the file name; anything else is refused."""
    name = path.name.lower()
    stem = name[:-3] if name.endswith(".gz") else name
    if name.endswith(".npy"):
        return "npy"
    if name.endswith(".npz"):
        return "npz"
    if "idx" in stem:  # train-images-idx3-ubyte, images.idx3-ubyte, x.idx
        return "idx"
    raise UserError(f"{path}: unknown file type; convert reads {SUPPORTED}")


def load_array(path: str | os.PathLike, key: str | None = None, flag: str = "--images") -> np.ndarray:
    """The array stored in `path` (an npz member when `key` is given), not copied where avoidable."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{flag} {path} does not exist; check the path")
    if path.is_dir():
        raise UserError(f"{flag} {path} is a directory; give the array file")
    kind = file_kind(path)
    if key is not None and kind != "npz":
        raise UserError(f"{flag}-key {key!r} only applies to .npz archives, but {path} is {kind}; drop {flag}-key")
    if kind == "npy":
        return _load_npy(path)
    if kind == "npz":
        return _load_npz_member(path, key, flag)
    return read_idx(path)


def _load_npy(path: Path) -> np.ndarray:
    # Read the header ourselves so that a truncated file gets a precise message
    # (np.load's mmap only says "mmap length is greater than file size").
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _fortran, dtype = read_header(f)
            data_start = f.tell()
    except (ValueError, OSError, EOFError) as error:
        raise UserError(f"{path} is not a readable .npy file ({error}); re-save it with numpy.save") from None
    if dtype.hasobject or dtype.fields is not None:
        raise UserError(f"{path} holds {dtype} values, not plain numbers; save a numeric array with numpy.save")
    expected = data_start + math.prod(shape) * dtype.itemsize
    actual = path.stat().st_size
    if actual < expected:
        raise UserError(f"{path} is truncated: the header promises {expected:,} bytes but the file has {actual:,}; re-create it")
    return np.load(path, mmap_mode="r", allow_pickle=False)


def _load_npz_member(path: Path, key: str | None, flag: str) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as archive:
            keys = list(archive.files)
            if key is None or key not in keys:
                what = f"has no array {key!r}" if key is not None else "is an .npz archive"
                raise UserError(f"{path} {what}; name one with {flag}-key (it has: {', '.join(keys) or 'no arrays'})")
            return archive[key]
    except UserError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise UserError(f"{path} is not a readable .npz archive ({error}); re-save it with numpy.savez") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse an IDX file (plain or gzipped) strictly: magic, dims, exact data length.

    Layout: 2 zero bytes, a type code (IDX_TYPES), the number of dims N, then N
    big-endian uint32 dims, then prod(dims) big-endian values. Returns a
    big-endian read-only view; callers convert row groups to native order.
    """
    path = Path(path)
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == GZIP_MAGIC
    if gzipped:
        try:
            with gzip.open(path, "rb") as f:
                return _parse_idx_stream(f, path)
        except (OSError, EOFError, zlib.error) as error:
            raise UserError(f"{path} is truncated or not valid gzip ({error}); download it again") from None
    with open(path, "rb") as f:
        dims, dtype, header_len = _parse_idx_header(f, path)
    expected = header_len + math.prod(dims) * dtype.itemsize
    _check_length(path, path.stat().st_size, expected)
    if math.prod(dims) == 0:
        return np.zeros(dims, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=header_len, shape=dims)


def _parse_idx_stream(f, path: Path) -> np.ndarray:
    dims, dtype, header_len = _parse_idx_header(f, path)
    nbytes = math.prod(dims) * dtype.itemsize
    data = f.read(nbytes)
    trailing = len(f.read(1)) if len(data) == nbytes else 0
    _check_length(path, header_len + len(data) + trailing, header_len + nbytes)
    return np.frombuffer(data, dtype=dtype).reshape(dims)


def _parse_idx_header(f, path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    magic = f.read(4)
    if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] not in IDX_TYPES or magic[3] == 0:
        shown = " ".join(f"{b:02x}" for b in magic) or "nothing"
        raise UserError(
            f"{path} is not an IDX file (starts with {shown}; IDX starts 00 00 <type 08/09/0b/0c/0d/0e> <dims>); "
            f"convert reads {SUPPORTED}"
        )
    ndim = magic[3]
    raw_dims = f.read(4 * ndim)
    if len(raw_dims) < 4 * ndim:
        raise UserError(f"{path} is truncated inside its IDX header ({ndim} dims promised); download it again")
    dims = tuple(int(d) for d in np.frombuffer(raw_dims, dtype=">u4"))
    return dims, np.dtype(IDX_TYPES[magic[2]]), 4 + 4 * ndim


def _check_length(path: Path, actual: int, expected: int) -> None:
    if actual < expected:
        raise UserError(f"{path} is truncated: its IDX header promises {expected:,} bytes but it holds {actual:,}; download it again")
    if actual > expected:
        raise UserError(f"{path} has {actual - expected:,} bytes after the data its IDX header describes; the file is damaged, download it again")



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


def _selected_rows(n: int, labels: np.ndarray | None, options: ConvertOptions) -> tuple[int, int, np.ndarray | None, int]:
    """(start, stop, explicit row indices or None for the whole range, rows excluded)."""
    start, stop = options.rows if options.rows is not None else (None, None)
    start = 0 if start is None else start
    stop = n if stop is None else stop
    if stop > n or start >= stop:
        raise UserError(f"--rows {start}:{stop} does not select rows of an input with {n:,} rows; use START < STOP <= {n}")
    if not options.exclude_classes:
        return start, stop, None, 0
    keep = ~np.isin(labels[start:stop], np.asarray(options.exclude_classes, dtype=np.int64))
    indices = np.flatnonzero(keep) + start
    if indices.size == 0:
        raise UserError(f"--exclude-class {list(options.exclude_classes)} leaves no rows in {start}:{stop}; exclude fewer classes")
    return start, stop, indices, int(stop - start - indices.size)


# -- writing ----------------------------------------------------------------------


def output_schema(options: ConvertOptions, value_type: pa.DataType, size: int, labelled: bool, metadata: dict) -> pa.Schema:
    # Non-nullable inputs: FixedSizeListArray.flatten() silently drops null rows (measured on these machines).
    fields = [pa.field(options.input_column, pa.list_(pa.field("element", value_type, nullable=False), size), nullable=False)]
    if labelled:
        fields.append(pa.field(options.label_column, pa.int32(), nullable=True))
    fields.append(pa.field(ROW_COLUMN, pa.int64(), nullable=False))
    encoded = json.dumps(metadata, sort_keys=True, separators=(",", ":")).encode()
    return pa.schema(fields, metadata={METADATA_KEY: encoded})


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
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name like {out / 'source.parquet'}")
    if out.exists() and not options.overwrite:
        raise UserError(f"--out {out} already exists; pass --overwrite to replace it")
    _check_images(images, where)
    n = images.shape[0]
    if labels is not None:
        labels = check_labels(labels, labels_where, n, where)
    elif options.exclude_classes:
        raise UserError("--exclude-class needs labels; pass --labels (or --labels-key)")
    start, stop, indices, excluded = _selected_rows(n, labels, options)
    rows = stop - start if indices is None else int(indices.size)

    shape = tuple(int(d) for d in images.shape[1:])
    size = math.prod(shape)
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
        "rows": [start, stop],
        "excluded_classes": sorted(set(options.exclude_classes)),
        "num_rows": rows,
        "input_shape": hint,
        **(provenance or {}),
    }
    schema = output_schema(options, pa.from_numpy_dtype(dtype), size, labelled, metadata)

    out.parent.mkdir(parents=True, exist_ok=True)
    # A hidden name that no reader takes for a source; renamed into place when whole.
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    try:
        with pq.ParquetWriter(
            tmp,
            schema,
            compression="zstd",
            use_dictionary=_dictionary_columns(options, dtype, labelled),
            write_statistics=[ROW_COLUMN] + ([options.label_column] if labelled else []),
        ) as writer, progress("convert", total=rows, quiet=quiet) as bar:
            for first in range(0, rows, options.row_group_rows):
                last = min(first + options.row_group_rows, rows)
                if indices is None:
                    row_ids = np.arange(start + first, start + last, dtype=np.int64)
                    block = images[start + first : start + last]
                else:
                    row_ids = indices[first:last]
                    block = images[row_ids]
                writer.write_batch(_batch(schema, block, row_ids, labels if labelled else None, dtype, size, where), row_group_size=last - first)
                bar.advance(last - first)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return ConvertResult(out, rows, excluded, shape, dtype.name, labelled, hint, note, metadata)


def _dictionary_columns(options: ConvertOptions, dtype: np.dtype, labelled: bool) -> list[str]:
    """Columns worth dictionary encoding (a list of leaf paths, as pyarrow matches them).

    Labels: a handful of distinct values. Inputs: only 8-bit integers, whose at most
    256 values always fit the dictionary; measured on MNIST train (60k x 784 uint8),
    zstd alone 14.7 MB, with a dictionary 10.6 MB, read speed the same (~0.3 s).
    Wider types overflow the dictionary page and fall back after paying for the
    attempt (floats: bigger and slower, measurements on these machines), so they stay plain.
    """
    columns = [options.label_column] if labelled else []
    if dtype.itemsize == 1:
        columns.append(f"{options.input_column}.list.element")
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
