"""`transferset ls`: the transfer sets below a directory, one line each."""

from __future__ import annotations

import argparse
import json

HELP = "list the transfer sets below a directory: kind, rows, classes, T, combine, teachers, size, complete or not"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", nargs="?", default=".", help="directory to search (default: .)")
    p.add_argument("--json", action="store_true", help="one JSON list, an object per set")
    p.add_argument("--verify", action="store_true", help="also check every shard's SHA-256 (reads all the data)")


def run(args: argparse.Namespace) -> int:
    from transferset.catalogue import find_sets

    entries = find_sets(args.root, check=args.verify)
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=1))
        return 0
    if not entries:
        print(f"no transfer sets below {args.root}")
        return 0
    rows = [_cells(e) for e in entries]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:  # the last cell (teachers, or what is wrong) is not padded
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1])
    return 0


def _cells(e) -> list[str]:
    from transferset.catalogue import human_bytes

    if e.target_kind is None:  # nothing readable to describe
        return [e.status, e.path, "-", "-", "-", "-", "-", human_bytes(e.bytes), e.problem or ""]
    if e.rows is None:  # not recorded (a set started by an older transferset)
        rows = f"{e.rows_written:,} rows written"
    else:
        rows = f"{e.rows:,} rows" if e.status == "complete" else f"{e.rows_written:,}/{e.rows:,} rows"
    teachers = f"{len(e.teachers)} teacher{'s' if len(e.teachers) != 1 else ''} ({', '.join(e.teachers)})"
    last = teachers if e.status == "complete" else f"{teachers}: {e.problem}"
    width = f"{e.num_classes} classes" if e.positions is None else f"{e.num_classes} tokens x {e.positions} positions"
    return [e.status, e.path, e.target_kind, rows, width, f"T={e.temperature:g}", e.combine,
            human_bytes(e.bytes), last]
