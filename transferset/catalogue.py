"""Find the transfer sets below a directory and say what each is (`transferset ls`).

A set is recognised by its bookkeeping (`_manifest.json`, `_job.json`, `_shards/`
or an interrupted replacement's marker), never by its Parquet files, and nothing
below a set is searched further. Status, cheapest evidence first:

    complete     the manifest opens (`read_manifest`: JSON, schema version, shard
                 list, every listed shard present) and every shard has its recorded
                 size; `check=True` also compares every SHA-256 (`verify`)
    incomplete   no manifest yet: a generate that is running or was stopped;
                 what `_job.json` recorded, and how many rows are written
    damaged      a manifest that does not open, a shard missing or of the wrong
                 size (or checksum), or bookkeeping that cannot be read

An incomplete or damaged set is described from its bookkeeping only: its shards
are never opened as if the set were whole.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from transferset.errors import UserError
from transferset.format.codecs import sequence_length
from transferset.format.manifest import JOB, MANIFEST, RECORDS_DIR, read_manifest, read_shard_records
from transferset.format.provenance import Provenance
from transferset.ownership import DISCARD

_MARKS = (MANIFEST, JOB, RECORDS_DIR, DISCARD)


@dataclass
class SetEntry:
    path: str
    status: str  # complete | incomplete | damaged
    problem: str | None = None  # why incomplete or damaged
    target_kind: str | None = None
    rows: int | None = None  # the set's rows (planned, while incomplete)
    rows_written: int = 0
    num_classes: int | None = None
    temperature: float | None = None
    combine: str | None = None
    teachers: list[str] = field(default_factory=list)
    bytes: int = 0  # every file in the directory
    positions: int | None = None  # per-token sets: positions per row (num_classes is then the vocabulary)

    def to_json(self) -> dict:
        return asdict(self)


def find_sets(root: str | Path, check: bool = False) -> list[SetEntry]:
    root = Path(root)
    if not root.exists():
        raise UserError(f"{str(root)!r} does not exist; give a directory that holds transfer sets")
    if not root.is_dir():
        raise UserError(f"{str(root)!r} is a file; give a directory that holds transfer sets")
    found = []
    for folder, subfolders, files in os.walk(root, onerror=None, followlinks=False):
        names = set(files) | set(subfolders)
        if names & set(_MARKS):
            found.append(describe(Path(folder), check))
            subfolders.clear()  # a set's own folders (_shards, a discard marker) are not sets
        else:
            subfolders[:] = sorted(d for d in subfolders if not d.startswith("."))
    return sorted(found, key=lambda e: e.path)


def describe(directory: Path, check: bool = False) -> SetEntry:
    size = _size(directory)
    if (directory / MANIFEST).exists():
        return _complete_or_damaged(directory, size, check)
    entry = _from_job(directory, size)
    if (directory / DISCARD).exists():
        entry.status, entry.problem = "incomplete", "an --overwrite was interrupted; rerun it to finish"
    return entry


def _complete_or_damaged(directory: Path, size: int, check: bool) -> SetEntry:
    try:
        manifest = read_manifest(directory)
    except UserError as error:
        return SetEntry(str(directory), "damaged", str(error), bytes=size)
    entry = _entry(directory, "complete", manifest.provenance, size)
    entry.rows = entry.rows_written = manifest.rows
    for record in manifest.shards:
        try:
            actual = (directory / record.path).stat().st_size
        except OSError:  # removed since the manifest was read
            actual = 0
        if actual != record.bytes:
            entry.status, entry.problem = "damaged", f"{record.path} has {actual:,} bytes, its record says {record.bytes:,}"
            return entry
    if check:
        from transferset.format.verify import verify

        problems = verify(directory)[1]
        if problems:
            entry.status, entry.problem = "damaged", "; ".join(f"{p.shard}: {p.problem}" for p in problems)
    return entry


def _from_job(directory: Path, size: int) -> SetEntry:
    written = sum(r.rows for r in read_shard_records(directory).values())
    try:
        raw = json.loads((directory / JOB).read_text())
        provenance = Provenance.decode(raw.get("provenance"), str(directory / JOB))
    except FileNotFoundError:
        return SetEntry(str(directory), "damaged", f"{RECORDS_DIR}/ without {JOB}: not a set a generate can finish",
                        rows_written=written, bytes=size)
    except (ValueError, UnicodeDecodeError, RecursionError, AttributeError, OSError, UserError):
        return SetEntry(str(directory), "damaged", f"{JOB} cannot be read; regenerate into an empty --out",
                        rows_written=written, bytes=size)
    entry = _entry(directory, "incomplete", provenance, size)
    entry.rows_written = written
    planned = f" of {provenance.rows:,}" if provenance.rows is not None else ""
    entry.problem = f"{written:,}{planned} rows written; rerun the command that made it to finish"
    return entry


def _entry(directory: Path, status: str, provenance: Provenance, size: int) -> SetEntry:
    return SetEntry(
        str(directory), status, target_kind=provenance.target_kind, rows=provenance.rows,
        num_classes=provenance.num_classes, temperature=provenance.temperature, combine=provenance.combine,
        teachers=[str(t.get("name")) for t in provenance.teachers], bytes=size, positions=sequence_length(provenance),
    )


def _size(directory: Path) -> int:
    total = 0
    for folder, _, files in os.walk(directory):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:  # removed while we looked
                pass
    return total


def human_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"
