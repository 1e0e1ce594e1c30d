"""Arrays on disk -> NumPy: .npy, .npz members and MNIST-style IDX (plain or .gz).

The first stage of `transferset convert`. Files are checked strictly before any
row is read (a truncated .npy or IDX, trailing bytes, a bad magic number each get
a one-line UserError naming the file), so the writer never meets a short array.

Memory: .npy and plain IDX files are memory-mapped; a .gz IDX or an .npz member is
held once, decompressed.
"""

from __future__ import annotations

import gzip
import math
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

from transferset.errors import UserError, first_line

SUPPORTED = ".npy, .npz (name the array with a key), IDX (e.g. train-images-idx3-ubyte or x.idx, plain or .gz)"

# IDX type code -> element type. Multi-byte values are big-endian on disk.
IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


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
        raise UserError(f"{path} is not a readable .npy file ({first_line(error)}); re-save it with numpy.save") from None
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
        raise UserError(f"{path} is not a readable .npz archive ({first_line(error)}); re-save it with numpy.savez") from None


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
            raise UserError(f"{path} is truncated or not valid gzip ({first_line(error)}); download it again") from None
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
