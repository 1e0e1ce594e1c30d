"""Generic file I/O: atomic writes, refused-write errors, hashing, path expansion, checked Parquet reads.

Nothing here knows what a transfer set or a checkpoint is; both build on it.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterator

from transferset.errors import UserError, first_line

if TYPE_CHECKING:
    import pyarrow.parquet as pq

# -- writing: atomically, and with one-line errors when the file system refuses -----

# A write the file system refuses for a reason the user can fix (space, quota, a
# size limit, permissions, a file where a folder should be) is a UserError naming
# the file and the fix, not an "internal error": rerunning the same command
# resumes (shards and checkpoints are published by rename, so nothing
# half-written is ever picked up).
_RESUME = "rerun the same command to resume"
_REFUSED_WRITES = {
    errno.ENOSPC: "no space left to write {path} (ENOSPC); free space and " + _RESUME,
    errno.EDQUOT: "disk quota exceeded writing {path} (EDQUOT); free space or raise the quota and " + _RESUME,
    errno.EFBIG: "{path} is larger than the file-size limit allows (EFBIG: `ulimit -f` or the file system's "
    "largest file); raise the limit or write to another file system, and " + _RESUME,
    errno.EROFS: "cannot write {path}: read-only file system (EROFS); remount it writable and " + _RESUME + ", or choose another --out",
    errno.EACCES: "cannot write {path}: permission denied (EACCES); make {folder} writable and " + _RESUME + ", or choose another --out",
    errno.EPERM: "cannot write {path}: operation not permitted (EPERM); make {folder} writable and " + _RESUME + ", or choose another --out",
    errno.ENOTDIR: "cannot write {path}: a folder on its path is a file (ENOTDIR); choose another --out",
}


def write_failure(error: BaseException | None, path: str | Path) -> UserError | None:
    """The one-line UserError for an OSError the file system raised writing `path`,
    or None when `error` is anything else (a bug or a device fault stays one)."""
    if not isinstance(error, OSError) or error.errno not in _REFUSED_WRITES:
        return None
    path = Path(path)
    return UserError(_REFUSED_WRITES[error.errno].format(path=path, folder=path.parent))


@contextmanager
def reporting_write_errors(path: str | Path) -> Iterator[None]:
    """Turn a refused write inside the block into `write_failure(error, path)`."""
    try:
        yield
    except OSError as error:
        user_error = write_failure(error, path)
        if user_error is None:
            raise
        raise user_error from error


class _Sink(io.RawIOBase):
    """A binary file that remembers the first OSError its writes raised.

    torch.save and torch.export.save write through C++ (PyTorchStreamWriter),
    which turns a failed Python write into `RuntimeError: unexpected pos ...`
    with no errno; the remembered error lets the caller say "no space left".
    (Given a *path* instead of a file, torch.export.save's writer even aborts
    the process from a destructor when the disk is full: always pass a file.)
    """

    def __init__(self, file: BinaryIO) -> None:
        super().__init__()
        self._file = file
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._file.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as error:
            self.error = self.error or error
            raise

    def flush(self) -> None:
        if self._file.closed:  # io.IOBase's finaliser flushes once more, after `with open` closed the file
            return
        try:
            self._file.flush()
        except OSError as error:
            self.error = self.error or error
            raise


def atomic_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """Write `path` through `write(file)` so that a reader sees the old file or the
    new one, never half: a temp file in the same folder, fsynced, then renamed.

    On any failure the temp file is deleted (a full disk must not stay full of
    our leftovers); a refused write (disk full, read-only, ...) is raised as the
    one-line UserError of `write_failure`, naming `path`.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    sink = None
    try:
        with open(tmp, "wb") as f:
            sink = _Sink(f)
            write(sink)
            sink.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        refused = error if isinstance(error, OSError) else (sink.error if sink is not None else None)
        user_error = write_failure(refused, path)
        if user_error is None:
            raise
        raise user_error from error


def atomic_write_json(path: Path, obj: Any) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half."""
    text = json.dumps(obj, indent=1, sort_keys=True)
    atomic_write(path, lambda f: f.write(text.encode()))


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()

def create_exclusive_json(path: Path, obj: Any) -> bool:
    """Publish `obj` as `path` only if no `path` exists (False then): a fully written,
    fsynced temp file hard-linked into place, so `path` is never seen half-written
    and of two racing creators exactly one wins."""
    if path.exists():
        return False
    text = json.dumps(obj, indent=1, sort_keys=True).encode()
    draft = path.with_name(f".{path.name}.tmp-{os.getpid()}-new")  # a temp name generate's cleanup knows
    try:
        with reporting_write_errors(path):
            _write_synced(draft, text, "wb")
            try:
                os.link(draft, path)
            except OSError as error:
                if error.errno not in (errno.EOPNOTSUPP, errno.EPERM, errno.EXDEV, errno.ENOSYS, errno.EMLINK):
                    raise
                # No hard links here (some FUSE/SMB mounts): an exclusive create still lets
                # exactly one of two racing writers win; a reader may then see it half-written,
                # which generate treats as a different configuration (a refusal, not a mix).
                _write_synced(path, text, "xb")
        return True
    except FileExistsError:
        return False
    finally:
        draft.unlink(missing_ok=True)


def _write_synced(path: Path, data: bytes, mode: str) -> None:
    with open(path, mode) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def expand_parquet_paths(specs, what: str) -> list[str]:
    """Files, directories (every *.parquet below, sorted, skipping `_hidden` and
    `.hidden` entries as pyarrow.dataset does: a transfer set's `_shards/` or a
    writer's temp files are not data) and globs -> files, each file once.

    The one rule for every command that reads Parquet data (generate's --source,
    train's --data and --eval, eval's --data). "Once" is by real path: the same
    file under two spellings (lab.parquet, ./lab.parquet, a symlink) would put every
    row in twice. `what` names the flag in errors ("source", "--data").
    """
    if isinstance(specs, (str, os.PathLike)):
        specs = [specs]
    if not specs:
        raise UserError(f"no {what} given; pass a Parquet file, a directory of them, or a glob")
    files: list[str] = []
    seen: set[str] = set()
    for spec in map(str, specs):
        if glob.has_magic(spec) and not os.path.exists(spec):
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                raise UserError(f"{what} glob {spec!r} matches no files; check the pattern")
        elif os.path.exists(spec):
            matches = [spec]
        else:
            raise UserError(f"{what} {spec!r} does not exist (or the glob matches nothing); check the path")
        for match in matches:
            if os.path.isdir(match):
                found = sorted(
                    str(p) for p in Path(match).rglob("*.parquet")
                    if p.is_file() and not any(part.startswith(("_", ".")) for part in p.relative_to(match).parts)
                )
                if not found:
                    raise UserError(f"{what} directory {match!r} holds no .parquet files; point at the Parquet data")
            else:
                found = [match]
            for f in found:
                if os.path.realpath(f) not in seen:
                    seen.add(os.path.realpath(f))
                    files.append(f)
    return files


# -- reading Parquet: streamed, checked ---------------------------------------------

READ_BUFFER = 1 << 20  # streamed reads through a 1 MiB buffer, not whole column chunks in memory


def open_parquet(path: str | Path, fix: str) -> "pq.ParquetFile":
    """A Parquet file opened for streamed reads, every page's CRC32 checked where the writer
    stored one (files without checksums read as before). Unreadable: a one-line UserError
    naming the file and ending in `fix`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER, page_checksum_verification=True)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise UserError(f"{path} cannot be read as Parquet ({first_line(error)}); {fix}") from None
