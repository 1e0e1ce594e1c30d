"""`transferset inspect`: a rich summary of a transfer set (or JSON with --json)."""

from __future__ import annotations

import argparse
import json

HELP = "summarise a transfer set: rows, classes, teachers, accuracy, entropy, agreement"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="transfer-set directory")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.add_argument("--source-root", metavar="DIR",
                   help="a per-token set made with `generate --inputs reference`: a folder holding its source files, if they moved")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _kind(s: dict) -> str:
    options = s.get("target_options") or {}
    width = options.get("k", options.get("n"))
    if s["target_kind"] == "views":  # e.g. "16 views of shift(2), topk:10 each"
        return f"{options.get('views')} views of {options.get('augment')}, " + (f"topk:{width}" if width else "dense") + " each"
    return s["target_kind"] + (f":{width}" if width is not None else "")


def _combined(s: dict) -> str:
    return "specialist ensemble" if s["combine"] == "specialists" else f"{s['combine']} mean"


def tables(s: dict) -> list[tuple[str, list[str] | None, list[list[str]]]]:
    """The summary as (title, column names or None for a key/value table, rows of text):
    printed by this command, and shown as HTML by `transferset report`."""
    if s.get("per_token"):  # a language-model set (transferset/inspect_tokens.py)
        from transferset.inspect_tokens import tables as token_tables

        return token_tables(s)
    from transferset.progress import counted

    head = [
        ["rows", f"{s['rows']:,} ({s['labelled_rows']:,} labelled, {s['unlabelled_rows']:,} unlabelled)"],
        ["classes", f"{s['num_classes']}" + (f": {', '.join(s['class_names'])}" if s["class_names"] else "")],
        ["targets", f"{_kind(s)}: {_combined(s)} at T = {s['temperature']:g}, stored as {s['storage_dtype']}"],
        ["on disk", f"{s['bytes'] / 1e6:.2f} MB in {counted(s['shards'], 'shard')}, {s['bytes_per_row']:.1f} B/row"
                    + (" (inputs by reference: not counted, they stay in the sources)" if s.get("inputs") == "reference" else "")],
        ["ensemble accuracy", f"{_pct(s['ensemble_accuracy'])} on labelled rows"],
        ["mean entropy", f"{s['mean_entropy_nats']:.4f} nats (max {s['max_entropy_nats']:.4f}) at T = {s['temperature']:g}"],
        *([["mean tail mass", f"{s['mean_tail_mass']:.3g} (the probability outside the stored top k)"]]
          if s.get("mean_tail_mass") is not None else []),
        ["members agree", _pct(s["members_agree"]) if s["teacher_logits_kept"] else "- (generate with --keep-teacher-logits)"],
        ["created", f"{s['created']} on {s['device']}"],
    ]
    teachers = [[t["name"], t["format"], f"{t['weight']:.3f}", _pct(t["accuracy"]), _pct(t["agrees_with_ensemble"]), t["sha256"][:16]]
                for t in s["teachers"]]
    sources = [[row["source"], f"{row['rows']:,}", f"{row['labelled']:,}", f"{row['rows'] - row['labelled']:,}"] for row in s["sources"]]
    return [
        (f"transfer set {s['directory']}", None, head),
        ("teachers", ["name", "format", "weight", "accuracy", "agrees with ensemble", "sha256"], teachers),
        ("sources", ["source", "rows", "labelled", "unlabelled"], sources),
    ]


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from transferset.inspect import summarize

    s = summarize(args.directory, args.source_root)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    console = Console()
    for title, columns, rows in tables(s):
        table = Table(title=title, show_header=columns is not None)
        for column in columns or []:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
    return 0
