"""`transferset demo`: the whole product on the bundled digits, through the CLI's own stages.

The bundled sample is scikit-learn's 1,797 8x8 handwritten digits (data/).
The demo shuffles it (seeded) into a small labelled set, a larger pool used
WITHOUT its labels, and held-out test rows, then:

  1. trains a small teacher ensemble on the labelled rows  (transferset train --data)
  2. generates a transfer set over labelled + unlabelled rows  (transferset generate)
  3. trains a student on the hard labels alone  (transferset train --data)
  4. trains the same student on the transfer set  (transferset train --transfer)
  5. scores everything on the held-out rows  (generate + inspect for the teachers,
     transferset eval for the students)

and prints one table. Every stage is a `cli.main([...])` call, the same code a
user runs from a shell. Each stage's own output goes to OUT/logs/.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "run the whole flow (teachers -> transfer set -> students) on the bundled digits"

MARKER = ".transferset-demo"  # the demo only ever deletes a directory it made
REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "digits.parquet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="transferset-demo", help="working directory (replaced on each run; default: transferset-demo)")
    p.add_argument("--data", default=str(REPO_DATA), help="the digits Parquet file (default: the bundled data/digits.parquet)")
    p.add_argument("--teachers", type=int, default=3, help="ensemble size (default: 3)")
    p.add_argument("--labelled", type=int, default=300, help="labelled rows the teachers and the hard-label student see (default: 300)")
    p.add_argument("--test", type=int, default=597, help="held-out rows (default: 597)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default: 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    import shutil
    import time

    import numpy as np
    import pyarrow.parquet as pq
    from rich.console import Console
    from rich.table import Table

    from transferset.errors import UserError

    data = Path(args.data)
    if not data.is_file():
        raise UserError(f"demo data {str(data)!r} not found; run from a source checkout or pass --data data/digits.parquet")
    if args.teachers < 1:
        raise UserError(f"--teachers {args.teachers}: the ensemble needs at least 1 teacher")
    n = pq.ParquetFile(data).metadata.num_rows
    if not 0 < args.labelled < n - args.test or args.test <= 0:
        raise UserError(f"--labelled {args.labelled} and --test {args.test} do not fit the {n} rows of {data}")
    if not args.temperature > 0:
        raise UserError(f"--temperature must be positive, got {args.temperature}")
    out = Path(args.out)
    if out.exists():
        if not (out / MARKER).exists():
            raise UserError(f"--out {str(out)!r} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by transferset demo; safe to delete\n")

    # -- data: labelled | unlabelled pool | held-out test --------------------------
    table = pq.read_table(data)
    # A seeded shuffle: the file is ordered by writer, so contiguous slices would
    # test on writers the models never saw.
    table = table.take(np.random.default_rng(args.seed).permutation(n))
    labelled, pool, test = out / "labelled.parquet", out / "unlabelled.parquet", out / "test.parquet"
    pq.write_table(table.slice(0, args.labelled), labelled)
    pq.write_table(table.slice(args.labelled, n - args.test - args.labelled).drop_columns(["label"]), pool)
    pq.write_table(table.slice(n - args.test), test)

    quiet = ["--quiet"]
    inputs = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]
    times: dict[str, float] = {}

    logs = out / "logs"
    logs.mkdir()

    def stage(name: str, argv: list[str]) -> None:
        import contextlib

        import cli

        log = logs / f"{len(list(logs.iterdir())):02d}-{argv[0]}.log"
        started = time.perf_counter()
        with open(log, "w") as f, contextlib.redirect_stderr(f):
            try:
                code = cli.main(argv + quiet)
            except SystemExit as exit:  # argparse refusing a stage's flags
                code = exit.code
        times[name] = times.get(name, 0.0) + time.perf_counter() - started
        if code != 0:
            raise UserError(f"demo stage {name!r} failed (exit {code}), see {log}: transferset {' '.join(argv)}")

    console = Console(stderr=True)
    say = (lambda m: None) if args.quiet else (lambda m: console.print(f"[bold]demo[/]: {m}"))
    say(f"{args.labelled} labelled rows, {n - args.test - args.labelled} unlabelled, {args.test} held out")

    # 1. teachers: wider nets with dropout, different seeds, hard labels only.
    teachers = []
    for k in range(args.teachers):
        run_dir = out / f"teacher-{k}"
        say(f"training teacher {k + 1}/{args.teachers}")
        stage("train teachers", ["train", "--data", str(labelled), *inputs, "--label-column", "label",
                                 "--student", "train.students:mlp", "--student-arg", "hidden=256,256", "--student-arg", "dropout=0.2",
                                 "--epochs", "60", "--batch-size", "32", "--optimizer", "adamw", "--lr", "2e-3",
                                 "--weight-decay", "1e-4", "--seed", str(args.seed + 100 + k), "--out", str(run_dir)])
        teachers += ["--teacher", str(run_dir / "student.pt2")]

    # 2. the transfer set: teachers' geometric mean over labelled + unlabelled rows.
    transfer = out / "transfer"
    say("generating the transfer set")
    stage("generate", ["generate", *teachers, "--source", str(labelled), "--source", str(pool), *inputs,
                       "--combine", "geometric", "--temperature", str(args.temperature),
                       "--keep-teacher-logits", "--out", str(transfer)])

    # 3 + 4. the same small student, on hard labels vs on the transfer set.
    student = ["--student", "train.students:mlp", "--student-arg", "hidden=32", "--epochs", "60", "--batch-size", "32",
               "--optimizer", "adamw", "--lr", "3e-3", "--seed", str(args.seed)]
    say("training the hard-label student")
    stage("train students", ["train", "--data", str(labelled), *inputs, "--label-column", "label", *student, "--out", str(out / "student-hard")])
    say("training the distilled student")
    stage("train students", ["train", "--transfer", str(transfer), "--alpha", "0.9", *student, "--out", str(out / "student-distilled")])

    # 5. score on held-out rows: teachers via a transfer set over the test rows.
    say("scoring on held-out rows")
    scored = out / "test-targets"
    stage("evaluate", ["generate", *teachers, "--source", str(test), *inputs, "--combine", "geometric",
                       "--temperature", str(args.temperature), "--keep-teacher-logits", "--out", str(scored)])
    rows = _score_rows(out, scored, test, stage)

    if args.json:
        import json

        print(json.dumps({"rows": [{"model": m, "accuracy": a, "errors": round((1 - a) * args.test)} for m, a in rows], "seconds": times}))
        return 0
    result = Table(title=f"transferset demo: {args.test} held-out digits ({args.labelled} labelled rows + {n - args.test - args.labelled} unlabelled)")
    for col in ("model", "accuracy", "errors"):
        result.add_column(col, justify="left" if col == "model" else "right")
    for name, acc in rows:
        result.add_row(name, f"{100 * acc:.2f}%", f"{round((1 - acc) * args.test)}")
    timing = Table(title="time per stage")
    timing.add_column("stage")
    timing.add_column("seconds", justify="right")
    for name, seconds in times.items():
        timing.add_row(name, f"{seconds:.1f}")
    timing.add_row("total", f"{sum(times.values()):.1f}")
    out_console = Console()
    out_console.print(result)
    out_console.print(timing)
    out_console.print(f"outputs in {out}/ (transfer set: {transfer}; try `transferset inspect {transfer}`)")
    return 0


def _score_rows(out: Path, scored: Path, test: Path, stage) -> list[tuple[str, float]]:
    """Accuracy of each teacher, the ensemble and both students on the test rows."""
    import contextlib
    import io
    import json

    import cli

    def captured(argv: list[str]) -> dict:
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            stage("evaluate", argv)
        return json.loads(buffer.getvalue())

    summary = captured(["inspect", str(scored), "--json"])
    rows = [(f"teacher {i + 1}", t["accuracy"]) for i, t in enumerate(summary["teachers"])]
    rows.append(("teacher ensemble (geometric)", summary["ensemble_accuracy"]))
    for name, run_dir in (("student, hard labels only", "student-hard"), ("student, distilled", "student-distilled")):
        metrics = captured(["eval", str(out / run_dir), "--data", str(test), "--json"])
        rows.append((name, metrics["accuracy"]))
    del cli
    return rows
