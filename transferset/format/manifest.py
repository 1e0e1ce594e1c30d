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

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from transferset.errors import UserError
from transferset.format.provenance import SCHEMA_VERSION, Provenance
from transferset.io import atomic_write_json, reporting_write_errors

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
    provenance: Provenance
    shards: tuple[ShardRecord, ...]

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def num_classes(self) -> int:
        return self.provenance.num_classes

    @property
    def temperature(self) -> float:
        return float(self.provenance.temperature)

    @property
    def combine(self) -> str:
        return self.provenance.combine

    def shard_paths(self) -> list[Path]:
        return [self.directory / s.path for s in self.shards]


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


def write_manifest(directory: Path, provenance: Provenance, records: list[ShardRecord]) -> Manifest:
    records = sorted(records, key=lambda r: r.index)
    atomic_write_json(
        directory / MANIFEST,
        {
            "format": MANIFEST_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "rows": sum(r.rows for r in records),
            "provenance": provenance.encode(),
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
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise UserError(f"{path} is not valid JSON; the transfer set is damaged, regenerate it") from None
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT:
        raise UserError(f"{path} is not a transferset manifest")
    if raw.get("schema_version") != SCHEMA_VERSION:
        raise UserError(
            f"{path}: transfer-set schema version {raw.get('schema_version')!r} is not supported "
            f"(this transferset reads version {SCHEMA_VERSION}); upgrade transferset or regenerate the set"
        )
    provenance = Provenance.decode(raw.get("provenance"), str(path))
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
