"""The directory layout of a transfer set, and its manifest.

    OUT/
      _manifest.json         written last, by rename: its presence means "complete"
      part-00000.parquet     shards, each renamed into place only once fully written
      part-00001.parquet
      _shards/part-00000.json  one record per finished shard (rows, bytes, sha256)
      _job.json              the configuration fingerprint and shard plan (for resume)
      README.md              the dataset card (format/card.py), written just before the manifest

Any number of independent writers (processes, GPUs, machines sharing a file
system) can each write a disjoint subset of the planned shards. A writer never
touches another's files; the manifest is assembled from the per-shard records
by whichever writer finds every planned shard finished. Readers only ever open
a set through its manifest, so a half-written set is never mistaken for one;
`read_manifest` refuses a shard listed twice (by name, index or SHA-256) and rows
that do not add up to the sources' (`check_shard_list`), reading no data.

Hugging Face `datasets.load_dataset(OUT)` finds the shards through the card's
`configs`; DuckDB's `read_parquet(OUT)` reads `*.parquet` only; pyarrow and pandas
skip names that start with `_` or `.` but need `exclude_invalid_files=True` (or a
glob) to pass the card; polars needs `f"{OUT}/*.parquet"` (docs/format.md).
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
    card: dict | None = None  # the card record: path, sha256, license, description, task

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


def read_job(directory: Path) -> dict:
    """`_job.json` as a dict ({} when missing or damaged: then it matches no configuration)."""
    try:
        recorded = json.loads((directory / JOB).read_text())
    except (ValueError, RecursionError, OSError):
        return {}
    return recorded if isinstance(recorded, dict) else {}


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
            record = shard_record(json.loads(p.read_text()))
        except (ValueError, TypeError, RecursionError, OSError):
            continue  # a damaged record is treated as an unfinished shard: it is redone
        if record is not None:
            records[record.index] = record
    return records


_RECORD_TYPES = {"path": str, "index": int, "rows": int, "labelled_rows": int, "bytes": int, "sha256": str}


def shard_record(raw) -> ShardRecord | None:
    """A ShardRecord from decoded JSON, or None when any field is missing or of the
    wrong type (a damaged record must never reach arithmetic or a dict key)."""
    if not isinstance(raw, dict) or set(raw) != set(_RECORD_TYPES):
        return None
    for key, kind in _RECORD_TYPES.items():
        value = raw[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            return None
    return ShardRecord(**raw)


def check_shard_list(shards: tuple[ShardRecord, ...], provenance: Provenance, path: Path) -> None:
    """Refuse a manifest that lists one shard twice, by name, index or content (a
    copied shard), or whose row total is not the sources' (when the set recorded it):
    a reader would otherwise train on the duplicates. Reads no data."""
    for what, key in (("name", lambda s: s.path), ("index", lambda s: s.index), ("SHA-256", lambda s: s.sha256)):
        seen: dict = {}
        for position, s in enumerate(shards):
            first = seen.setdefault(key(s), position)
            if first != position:
                raise UserError(
                    f"{path}: shards {shards[first].path} and {s.path} have the same {what} (a shard listed twice or copied); "
                    f"the transfer set is damaged: regenerate it into an empty --out"
                )
    total = sum(s.rows for s in shards)
    if provenance.rows is not None and total != provenance.rows:
        raise UserError(
            f"{path}: the shards hold {total:,} rows but the sources have {provenance.rows:,}; "
            f"the transfer set is damaged: regenerate it into an empty --out"
        )


def write_manifest(directory: Path, provenance: Provenance, records: list[ShardRecord], card=None) -> Manifest:
    """Publish a set: its card (README.md, with `card`'s CardSettings), then the manifest,
    each by atomic rename. The manifest's presence is what "complete" means, so a
    complete set always has its card."""
    from transferset.format.card import CardSettings, write_card

    records = sorted(records, key=lambda r: r.index)
    card_record = write_card(directory, provenance, records, card or CardSettings())
    atomic_write_json(
        directory / MANIFEST,
        {
            "format": MANIFEST_FORMAT,
            "schema_version": SCHEMA_VERSION,
            "rows": sum(r.rows for r in records),
            "provenance": provenance.encode(),
            "shards": [asdict(r) for r in records],
            "card": card_record,  # not part of any checksum: editing the card leaves the set valid
        },
    )
    return Manifest(directory, provenance, tuple(records), card_record)


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
    listed = raw.get("shards")
    shards = tuple(shard_record(s) for s in listed) if isinstance(listed, list) else (None,)
    if None in shards:
        raise UserError(f"{path}: the shard list is malformed; the transfer set is damaged, regenerate it")
    if not shards:
        raise UserError(f"transfer set {str(directory)!r} has no shards (0 rows); generate it from a non-empty source")
    check_shard_list(shards, provenance, path)
    root = directory.resolve()
    for s in shards:
        try:
            target = (directory / s.path).resolve()
        except (OSError, ValueError):  # a NUL byte, a symlink loop
            raise UserError(f"{path}: shard path {s.path!r} cannot be resolved; the transfer set is damaged, regenerate it") from None
        # A manifest is data from whoever published the set: never let it name
        # a file outside the set's own directory.
        if root not in target.parents:
            raise UserError(f"{path}: shard path {s.path!r} points outside the transfer set; refusing to read it")
        if require_shards and not target.is_file():
            raise UserError(
                f"transfer set {str(directory)!r} is missing shard {s.path}: restore the file, or run "
                f"`transferset verify {directory} --drop-bad` and rerun the generate that made the set to recompute it"
            )
    card = raw.get("card") if isinstance(raw.get("card"), dict) else None  # absent in sets older than cards
    return Manifest(directory, provenance, shards, card)
