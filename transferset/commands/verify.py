"""`transferset verify`: shard checksums against the manifest."""

from __future__ import annotations

import argparse

HELP = "check every shard of a transfer set against the manifest's checksums"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="transfer-set directory")
    p.add_argument("--drop-bad", action="store_true",
                   help="delete failed shards (and the manifest) so that rerunning the same generate redoes just those")


def run(args: argparse.Namespace) -> int:
    from transferset.errors import UserError
    from transferset.format.verify import drop_bad, verify

    manifest, problems = verify(args.directory)
    problems += _foreign_shards(manifest, {p.shard for p in problems})
    if not problems:
        print(f"{args.directory}: OK, {len(manifest.shards)} shards, {manifest.rows:,} rows, checksums match")
        return 0
    listing = "; ".join(f"{p.shard}: {p.problem}" for p in problems)
    if args.drop_bad:
        drop_bad(manifest, problems)
    # One line either way (the error): what was found, and what --drop-bad did or would do.
    hint = ("deleted them and the manifest: rerun the same generate to recompute them" if args.drop_bad
            else f"run `transferset verify {args.directory} --drop-bad`, then rerun the same generate")
    raise UserError(f"{args.directory} failed verification: {len(problems)} of {len(manifest.shards)} shards bad ({listing}); {hint}")


def _foreign_shards(manifest, already_bad: set[str]) -> list:
    """Shards whose checksums match but whose metadata says they belong to another set
    or schema version (a directory assembled from several sets): bad shards too."""
    import pyarrow.parquet as pq

    from transferset.format.shards import shard_mismatch
    from transferset.format.verify import ShardProblem

    found = []
    for record, path in zip(manifest.shards, manifest.shard_paths()):
        if record.path in already_bad:
            continue
        mismatch = shard_mismatch(manifest.provenance, pq.read_schema(path))
        if mismatch:
            found.append(ShardProblem(record.path, f"{mismatch} (a shard of another transfer set or schema version)"))
    return found
