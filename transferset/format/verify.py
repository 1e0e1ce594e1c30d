"""Check every shard of a transfer set against its manifest record.

Streaming and cheap: one sequential read per shard for the SHA-256 (about
1 GB/s here) plus its Parquet footer. A flipped byte shows as a checksum
mismatch, a truncated or missing file as a size mismatch; both are reported
by shard name. `drop_bad` deletes the failed shards, their records and the
manifest, so that rerunning the same `transferset generate` recomputes exactly
those shards (the rest are kept) and publishes a new manifest.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from transferset.format.manifest import MANIFEST, RECORDS_DIR, Manifest, read_manifest
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
    """Delete failed shards, their records and the manifest (generate redoes them)."""
    directory = manifest.directory
    root = directory.resolve()
    for p in problems:
        if root not in (directory / p.shard).resolve().parents:  # read_manifest refuses these; never delete outside
            continue
        (directory / p.shard).unlink(missing_ok=True)
        (directory / RECORDS_DIR / Path(p.shard).with_suffix(".json").name).unlink(missing_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
