"""Per-shard integrity: does this file belong to this set, and is it intact?

Two checks, both used by every reader of a set (trainer, `inspect`, `verify`):

* `shard_mismatch`: the shard's footer provenance against the manifest's, on the
  fields that say how to decode it and which configuration made it. `created`
  and `versions` are left out: two independent writers that start at once each
  record their own.
* `check_shard`: the file against its manifest record (size, SHA-256, row count).
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from transferset.errors import UserError, first_line
from transferset.format.manifest import MANIFEST, Manifest, ShardRecord
from transferset.format.provenance import Provenance
from transferset.format.schema import METADATA_KEY
from transferset.io import file_sha256

SHARD_KEYS = ("format", "schema_version", "target_kind", "num_classes", "temperature", "combine", "storage_dtype", "config_fingerprint")


def shard_mismatch(provenance: Provenance, shard_schema: pa.Schema) -> str | None:
    """Why a shard (its Arrow schema, from the footer) is not part of this set, or None."""
    raw = (shard_schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        return "has no transferset metadata (it is not a shard of a transfer set)"
    try:
        shard = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        shard = None
    if not isinstance(shard, dict):
        return "has damaged transferset metadata (not a JSON object)"
    expected = provenance.encode()
    for key in SHARD_KEYS:
        if expected.get(key) is not None and shard.get(key) != expected[key]:
            return f"has {key} {shard.get(key)!r} but {MANIFEST} has {expected[key]!r}"
    return None


def mixed_shards_message(path: str | Path, problem: str, directory: str | Path) -> str:
    return (
        f"{path} {problem}: the directory mixes shards of different transfer sets or schema versions; "
        f"run `transferset verify {directory} --drop-bad` and rerun its generate, or regenerate into an empty --out"
    )


def check_shards_match(manifest: Manifest) -> None:
    """Refuse a set whose shards do not all come from the manifest's configuration
    (e.g. shards of another schema version copied into the directory). Reads footers only."""
    for path in manifest.shard_paths():
        try:
            shard_schema = pq.read_schema(path)
        except (pa.ArrowInvalid, OSError) as error:
            raise UserError(
                f"{path} cannot be read as Parquet ({first_line(error)}); the transfer set is damaged: "
                f"run `transferset verify {manifest.directory} --drop-bad` and rerun its generate"
            ) from None
        problem = shard_mismatch(manifest.provenance, shard_schema)
        if problem:
            raise UserError(mixed_shards_message(path, problem, manifest.directory))


def check_shard(directory: Path, record: ShardRecord) -> str | None:
    """What is wrong with one shard's file against its record, or None."""
    path = directory / record.path
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != record.bytes:
        return f"{'truncated' if size < record.bytes else 'grown'}: {size} bytes, manifest says {record.bytes}"
    if file_sha256(path) != record.sha256:
        return "checksum mismatch (the file was modified or damaged)"
    try:
        rows = pq.ParquetFile(path).metadata.num_rows
    except (pa.ArrowInvalid, OSError) as error:
        return f"unreadable Parquet ({first_line(error)})"
    if rows != record.rows:
        return f"{rows} rows, manifest says {record.rows}"
    return None
