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
    from transferset.progress import say
    from transferset.verify import drop_bad, verify

    manifest, problems = verify(args.directory)
    if not problems:
        print(f"{args.directory}: OK, {len(manifest.shards)} shards, {manifest.rows:,} rows, checksums match")
        return 0
    listing = "; ".join(f"{p.shard}: {p.problem}" for p in problems)
    if args.drop_bad:
        drop_bad(manifest, problems)
        say(f"deleted {len(problems)} bad shards; rerun the same `transferset generate` to recompute them", args.quiet)
    hint = "rerun the same generate to recompute them" if args.drop_bad else f"run `transferset verify {args.directory} --drop-bad`, then rerun the same generate"
    raise UserError(f"{args.directory} failed verification: {len(problems)} of {len(manifest.shards)} shards bad ({listing}); {hint}")
