"""`transferset verify`: shard checksums against the manifest."""

from __future__ import annotations

import argparse

HELP = "check every shard of a transfer set against the manifest's checksums"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="transfer-set directory")
    p.add_argument("--drop-bad", action="store_true",
                   help="delete failed shards (and the manifest) so that rerunning the same generate redoes just those")
    p.add_argument("--source-root", metavar="DIR",
                   help="a set made with `generate --inputs reference`: a folder holding its source files, if they moved")


def run(args: argparse.Namespace) -> int:
    if not args.drop_bad:
        return _run(args)
    from pathlib import Path

    from transferset import ownership

    with ownership.scope():  # --drop-bad deletes: not while a generate (or another --drop-bad) writes the set
        if Path(args.directory).is_dir():
            ownership.claim(Path(args.directory), what="transfer set")
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from transferset.errors import UserError
    from transferset.progress import counted
    from transferset.format.verify import drop_bad, verify

    manifest, problems = verify(args.directory)
    problems += _foreign_shards(manifest, {p.shard for p in problems})
    if not problems:
        _refuse_duplicate_ids(manifest, args.directory)
        sources = _check_sources(manifest, args)
        print(f"{args.directory}: OK, {counted(len(manifest.shards), 'shard')}, {counted(manifest.rows, 'row')}, checksums match, ids unique{sources}")
        _note_card(manifest, args.directory)
        return 0
    listing = "; ".join(f"{p.shard}: {p.problem}" for p in problems)
    if args.drop_bad:
        drop_bad(manifest, problems)
    # One line either way (the error): what was found, and what --drop-bad did or would do.
    hint = (f"deleted them, their records and the manifest: rerun the same generate (`transferset generate` with the flags "
            f"that made the set, --out {args.directory}) to recompute just them" if args.drop_bad
            else f"run `transferset verify {args.directory} --drop-bad`, then rerun the same generate")
    raise UserError(f"{args.directory} failed verification: {len(problems)} of {counted(len(manifest.shards), 'shard')} bad ({listing}); {hint}")


def _check_sources(manifest, args) -> str:
    """A set with its inputs by reference is whole only with its sources: each found and unchanged (sha256)."""
    from transferset.format.references import by_reference, check_references, locate_sources

    if not by_reference(manifest.provenance):
        return ""
    located = locate_sources(manifest.provenance, f"transfer set {args.directory}", args.source_root)
    check_references(manifest, located)
    return f", {len(located)} referenced source{'s' if len(located) != 1 else ''} unchanged"


def _note_card(manifest, directory) -> None:
    """The card is not part of the content: a changed or missing one is a note, never a failure."""
    from transferset.format.card import card_problem

    problem = card_problem(manifest)
    if problem:
        print(f"{directory}: note: the dataset card {problem}")


def _refuse_duplicate_ids(manifest, directory) -> None:
    from transferset.errors import UserError
    from transferset.progress import counted
    from transferset.format.verify import duplicate_id

    found = duplicate_id(manifest)
    if found:
        raise UserError(
            f"{directory} failed verification: row id {found[0]!r} occurs {found[1]} times across the shards "
            f"(rows written twice); regenerate the set into an empty --out"
        )


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
