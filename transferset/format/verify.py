"""Check every shard of a transfer set against its manifest record.

Streaming and cheap: one sequential read per shard for the SHA-256 (about
1 GB/s here) plus its Parquet footer. A flipped byte shows as a checksum
mismatch, a truncated or missing file as a size mismatch; both are reported
by shard name. `drop_bad` deletes the failed shards' records, the card, the manifest and
the shards (in that order: any kill point is recovered by rerunning a command),
so that rerunning the same `transferset generate` recomputes exactly those
shards (the rest are kept) and publishes a new manifest. `duplicate_id` finds a
row id that occurs twice across the set (ids only, streamed by polars).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferset.errors import UserError
from transferset.format.card import CARD
from transferset.format.manifest import JOB, MANIFEST, RECORDS_DIR, Manifest, read_manifest
from transferset.format.shards import check_shard


@dataclass(frozen=True)
class ShardProblem:
    shard: str
    problem: str


def verify(directory: str | Path) -> tuple[Manifest, list[ShardProblem]]:
    manifest = read_manifest(Path(directory), require_shards=False)
    problems = []
    for record in manifest.shards:
        problem = check_shard(manifest.directory, record)
        if problem:
            problems.append(ShardProblem(record.path, problem))
    return manifest, problems


def drop_bad(manifest: Manifest, problems: list[ShardProblem]) -> None:
    """Delete failed shards' records, then the manifest, then the shards.

    The order makes every kill point recoverable by rerunning a command: while the
    manifest exists, `verify --drop-bad` still lists the same shards and finishes
    the job; once it is gone, generate sees no record for those shards (a record is
    generate's "finished" mark) and redoes exactly them, whatever files are left."""
    directory = manifest.directory
    refuse_symlinked_bookkeeping(directory)
    root = directory.resolve()
    inside = [p for p in problems if root in (directory / p.shard).resolve().parents]  # read_manifest refuses others
    for p in inside:
        (directory / RECORDS_DIR / Path(p.shard).with_suffix(".json").name).unlink(missing_ok=True)
    # The card goes with the manifest: its `configs` would let directory-level loaders
    # (datasets, DuckDB) read the partial set as if it were whole. The rerun writes both again.
    (directory / CARD).unlink(missing_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    for p in inside:
        (directory / p.shard).unlink(missing_ok=True)


def refuse_symlinked_bookkeeping(directory: Path) -> None:
    """Deleting through a symlinked `_shards/` or manifest would delete another set's
    records: refuse, naming the link, before anything is deleted."""
    names = [MANIFEST, JOB, RECORDS_DIR]
    if not (directory / RECORDS_DIR).is_symlink() and (directory / RECORDS_DIR).is_dir():
        names += [f"{RECORDS_DIR}/{p.name}" for p in (directory / RECORDS_DIR).iterdir()]
    for name in names:
        if (directory / name).is_symlink():
            raise UserError(
                f"{directory / name} is a symlink; --drop-bad deletes only inside a set's own directory: "
                f"replace the link by a copy of what it points at, or regenerate into an empty --out"
            )


def duplicate_id(manifest: Manifest) -> tuple[str, int] | None:
    """A row id that occurs more than once across the set and its count, or None.
    Streamed by polars over the `id` column alone (memory: the distinct ids)."""
    import polars as pl

    from transferset.format.schema import ID

    frame = pl.scan_parquet([str(p) for p in manifest.shard_paths()]).select(ID)
    found = (frame.group_by(ID).agg(pl.len().alias("count")).filter(pl.col("count") > 1).head(1)
             .collect(engine="streaming"))
    return (found[ID][0], int(found["count"][0])) if found.height else None
