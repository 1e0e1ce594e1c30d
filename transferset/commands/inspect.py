"""`transferset inspect`: a rich summary of a transfer set (or JSON with --json)."""

from __future__ import annotations

import argparse
import json

HELP = "summarise a transfer set: rows, classes, teachers, accuracy, entropy, agreement"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="transfer-set directory")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from transferset.inspect import summarize
    from transferset.progress import counted

    s = summarize(args.directory)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    console = Console()
    head = Table(title=f"transfer set {s['directory']}", show_header=False)
    for key, value in [
        ("rows", f"{s['rows']:,} ({s['labelled_rows']:,} labelled, {s['unlabelled_rows']:,} unlabelled)"),
        ("classes", f"{s['num_classes']}" + (f": {', '.join(s['class_names'])}" if s["class_names"] else "")),
        ("targets", f"{s['combine']} mean at T = {s['temperature']:g}, stored as {s['storage_dtype']}"),
        ("on disk", f"{s['bytes'] / 1e6:.2f} MB in {counted(s['shards'], 'shard')}, {s['bytes_per_row']:.1f} B/row"),
        ("ensemble accuracy", f"{_pct(s['ensemble_accuracy'])} on labelled rows"),
        ("mean entropy", f"{s['mean_entropy_nats']:.4f} nats (max {s['max_entropy_nats']:.4f}) at T = {s['temperature']:g}"),
        ("members agree", _pct(s["members_agree"]) if s["teacher_logits_kept"] else "- (generate with --keep-teacher-logits)"),
        ("created", f"{s['created']} on {s['device']}"),
    ]:
        head.add_row(key, value)
    console.print(head)
    teachers = Table(title="teachers")
    for col in ("name", "format", "weight", "accuracy", "agrees with ensemble", "sha256"):
        teachers.add_column(col)
    for t in s["teachers"]:
        teachers.add_row(t["name"], t["format"], f"{t['weight']:.3f}", _pct(t["accuracy"]), _pct(t["agrees_with_ensemble"]), t["sha256"][:16])
    console.print(teachers)
    sources = Table(title="sources")
    for col in ("source", "rows", "labelled", "unlabelled"):
        sources.add_column(col)
    for row in s["sources"]:
        sources.add_row(row["source"], f"{row['rows']:,}", f"{row['labelled']:,}", f"{row['rows'] - row['labelled']:,}")
    console.print(sources)
    return 0
