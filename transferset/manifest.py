"""The directory layout of a transfer set, and its manifest.

    OUT/
      _manifest.json         written last, by rename: its presence means "complete"
      part-00000.parquet     shards, each renamed into place only once fully written
      part-00001.parquet
      _shards/part-00000.json  one record per finished shard (rows, bytes, sha256)
      _job.json              the configuration fingerprint and shard plan (for resume)

Any number of independent writers (processes, GPUs, machines sharing a file
system) can each write a disjoint subset of the planned shards. A writer never
touches another's files; the manifest is assembled from the per-shard records
by whichever writer finds every planned shard finished. Readers only ever open
a set through its manifest, so a half-written set is never mistaken for one.

Names that start with `_` or `.` are skipped by pyarrow.dataset and pandas, so
`pyarrow.dataset.dataset(OUT)` and `pandas.read_parquet(OUT)` read the shards
directly; polars reads them with `polars.scan_parquet(f"{OUT}/*.parquet")`.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from transferset.errors import UserError
from transferset.schema import FORMAT_NAME, SCHEMA_VERSION, validate_provenance

MANIFEST = "_manifest.json"
JOB = "_job.json"
RECORDS_DIR = "_shards"
MANIFEST_FORMAT = "transferset-manifest"


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


@dataclass(frozen=True)
class ShardRecord:
    path: str  # relative to the transfer-set directory
    index: int
    rows: int
    labelled_rows: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    directory: Path
    provenance: dict[str, Any]
    shards: tuple[ShardRecord, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def num_classes(self) -> int:
        return int(self.provenance["num_classes"])

    @property
    def temperature(self) -> float:
        return float(self.provenance["temperature"])

    @property
    def combine(self) -> str:
        return self.provenance["combine"]

    def shard_paths(self) -> list[Path]:
        return [self.directory / s.path for s in self.shards]


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


def write_shard_record(directory: Path, record: ShardRecord) -> None:
    with reporting_write_errors(directory / RECORDS_DIR):
        (directory / RECORDS_DIR).mkdir(exist_ok=True)
    atomic_write_json(directory / RECORDS_DIR / Path(record.path).with_suffix(".json").name, asdict(record))


def read_shard_records(directory: Path) -> dict[int, ShardRecord]:
    records = {}
    folder = directory / RECORDS_DIR
    if not folder.is_dir():
        return records
    for p in folder.glob("part-*.json"):
        try:
            record = ShardRecord(**json.loads(p.read_text()))
        except (ValueError, TypeError):
            continue  # a damaged record is treated as an unfinished shard: it is redone
        records[record.index] = record
    return records


def write_manifest(directory: Path, provenance: dict[str, Any], records: list[ShardRecord]) -> Manifest:
    records = sorted(records, key=lambda r: r.index)
    atomic_write_json(
        directory / MANIFEST,
        {
            "format": MANIFEST_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "rows": sum(r.rows for r in records),
            "provenance": provenance,
            "shards": [asdict(r) for r in records],
        },
    )
    return Manifest(directory, provenance, tuple(records))


def read_manifest(directory: str | Path, require_shards: bool = True) -> Manifest:
    """Open a complete transfer set, checking everything a reader relies on.

    `require_shards=False` (for `verify`, which reports missing shards itself)
    skips only the "file exists" check; paths are always kept inside the set."""
    directory = Path(directory)
    if not directory.exists():
        raise UserError(f"transfer set {str(directory)!r} does not exist; run `transferset generate --out {directory}` first")
    if not directory.is_dir():
        raise UserError(f"{str(directory)!r} is a file, not a transfer-set directory")
    path = directory / MANIFEST
    if not path.exists():
        if (directory / JOB).exists():
            raise UserError(f"transfer set {str(directory)!r} is incomplete (no _manifest.json); rerun the same `transferset generate` to finish it")
        raise UserError(f"{str(directory)!r} is not a transfer set (no _manifest.json); point at a directory made by `transferset generate`")
    try:
        raw = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{path} is not valid JSON; the transfer set is damaged, regenerate it") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a transferset manifest")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{path}: transfer-set schema version {raw.get('schema_version')!r} is not supported "
            f"(this transferset reads version {SCHEMA_VERSION}); upgrade transferset or regenerate the set"
        )
    provenance = raw.get("provenance")
    validate_provenance(provenance, str(path))
    try:
        shards = tuple(ShardRecord(**s) for s in raw["shards"])
    except (KeyError, TypeError):
        raise UserError(f"{path}: the shard list is malformed; the transfer set is damaged, regenerate it") from None
    if not shards:
        raise UserError(f"transfer set {str(directory)!r} has no shards (0 rows); generate it from a non-empty source")
    root = directory.resolve()
    for s in shards:
        target = (directory / s.path).resolve()
        # A manifest is data from whoever published the set: never let it name
        # a file outside the set's own directory.
        if root not in target.parents:
            raise UserError(f"{path}: shard path {s.path!r} points outside the transfer set; refusing to read it")
        if require_shards and not target.is_file():
            raise UserError(f"transfer set {str(directory)!r} is missing shard {s.path}; regenerate it or restore the file")
    return Manifest(directory, provenance, shards)


def is_transferset_format(provenance: dict) -> bool:
    return provenance.get("format") == FORMAT_NAME
