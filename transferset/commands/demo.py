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

and prints one table. Every stage is a `transferset.commands.main.main([...])`
call, the same code a user runs from a shell. Each stage's own output goes to
OUT/logs/.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

HELP = "run the whole flow (teachers -> transfer set -> students) on the bundled digits"

MARKER = ".transferset-demo"  # the demo only ever deletes a directory it made
REPO_DATA = Path(__file__).resolve().parents[2] / "data" / "digits.parquet"
# How every stage reads the digits: 8x8 pixel counts 0..16, scaled to 0..1.
INPUT_FLAGS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="transferset-demo", help="working directory (replaced on each run; default: transferset-demo)")
    p.add_argument("--data", default=str(REPO_DATA), help="the digits Parquet file (default: the bundled data/digits.parquet)")
    p.add_argument("--teachers", type=int, default=3, help="ensemble size (default: 3)")
    p.add_argument("--labelled", type=int, default=300, help="labelled rows the teachers and the hard-label student see (default: 300)")
    p.add_argument("--test", type=int, default=597, help="held-out rows (default: 597)")
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of every stage (default: 0)")
    p.add_argument("--json", action="store_true", help="print the results as one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    rows_in_data = _check_flags(args)
    out = _fresh_directory(Path(args.out))
    labelled, pool, test = _split_rows(Path(args.data), rows_in_data, out, args.labelled, args.test, args.seed)
    stages = _Stages(out / "logs")
    console = Console(stderr=True)
    say = (lambda m: None) if args.quiet else (lambda m: console.print(f"[bold]demo[/]: {m}"))
    say(f"{args.labelled} labelled rows, {rows_in_data - args.test - args.labelled} unlabelled, {args.test} held out")

    teachers = _train_teachers(stages, out, labelled, args, say)
    transfer = _generate_transfer_set(stages, out, teachers, [labelled, pool], args, say)
    _train_students(stages, out, labelled, transfer, args, say)
    scores = _score_on_test_rows(stages, out, teachers, test, args, say)

    if args.json:
        _print_json(scores, stages.seconds, args.test)
    else:
        _print_tables(scores, stages.seconds, args, rows_in_data)
        Console().print(f"outputs in {out}/ (transfer set: {transfer}; try `transferset inspect {transfer}`)")
    return 0


# -- set-up: flags, directory, data ------------------------------------------------


def _check_flags(args: argparse.Namespace) -> int:
    """Every flag checked before --out is touched; the number of rows in --data."""
    import pyarrow.parquet as pq

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
    return n


def _fresh_directory(out: Path) -> Path:
    """`out`, empty but for the marker; an existing `out` is replaced only if the demo made it."""
    import shutil

    from transferset.errors import UserError

    if out.exists():
        if not (out / MARKER).exists():
            raise UserError(f"--out {str(out)!r} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / MARKER).write_text("made by transferset demo; safe to delete\n")
    return out


def _split_rows(data: Path, n: int, out: Path, labelled_rows: int, test_rows: int, seed: int) -> tuple[Path, Path, Path]:
    """labelled | unlabelled pool (label column dropped) | held-out test, as three Parquet files."""
    import numpy as np
    import pyarrow.parquet as pq

    table = pq.read_table(data)
    # A seeded shuffle: the file is ordered by writer, so contiguous slices would
    # test on writers the models never saw.
    table = table.take(np.random.default_rng(seed).permutation(n))
    labelled, pool, test = out / "labelled.parquet", out / "unlabelled.parquet", out / "test.parquet"
    pq.write_table(table.slice(0, labelled_rows), labelled)
    pq.write_table(table.slice(labelled_rows, n - test_rows - labelled_rows).drop_columns(["label"]), pool)
    pq.write_table(table.slice(n - test_rows), test)
    return labelled, pool, test


class _Stages:
    """Runs `transferset ARGV --quiet` in this process as one demo stage: the command and
    its stderr to a numbered log under `logs`, its time added to `seconds[name]`."""

    def __init__(self, logs: Path) -> None:
        logs.mkdir()
        self.logs = logs
        self.seconds: dict[str, float] = {}

    def run(self, name: str, argv: list[str]) -> None:
        import contextlib
        import shlex
        import time

        from transferset.commands.main import main
        from transferset.errors import UserError

        log = self.logs / f"{len(list(self.logs.iterdir())):02d}-{argv[0]}.log"
        started = time.perf_counter()
        with open(log, "w") as f, contextlib.redirect_stderr(f):
            # The command first, so the log says what ran even when the stage printed nothing.
            f.write("$ " + shlex.join(["transferset", *argv, "--quiet"]) + "\n")
            f.flush()
            try:
                code = main(argv + ["--quiet"])
            except SystemExit as exit:  # argparse refusing a stage's flags
                code = exit.code
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - started
        if code != 0:
            raise UserError(f"demo stage {name!r} failed (exit {code}), see {log}: transferset {' '.join(argv)}")

    def json(self, name: str, argv: list[str]) -> dict:
        """Run a stage that prints one JSON object (`--json`) and return that object."""
        import contextlib
        import io
        import json

        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            self.run(name, argv)
        return json.loads(buffer.getvalue())


# -- the stages --------------------------------------------------------------------


def _train_teachers(stages: _Stages, out: Path, labelled: Path, args: argparse.Namespace, say: Callable[[str], None]) -> list[str]:
    """Wider nets with dropout, different seeds, hard labels only; the `--teacher` flags for them."""
    teachers = []
    for k in range(args.teachers):
        run_dir = out / f"teacher-{k}"
        say(f"training teacher {k + 1}/{args.teachers}")
        stages.run("train teachers", ["train", "--data", str(labelled), *INPUT_FLAGS, "--label-column", "label",
                                      "--student", "train.students:mlp", "--student-arg", "hidden=256,256", "--student-arg", "dropout=0.2",
                                      "--epochs", "60", "--batch-size", "32", "--optimizer", "adamw", "--lr", "2e-3",
                                      "--weight-decay", "1e-4", "--seed", str(args.seed + 100 + k), "--out", str(run_dir)])
        teachers += ["--teacher", str(run_dir / "student.pt2")]
    return teachers


def _generate_transfer_set(stages: _Stages, out: Path, teachers: list[str], sources: list[Path], args: argparse.Namespace,
                           say: Callable[[str], None]) -> Path:
    """The teachers' geometric mean over labelled + unlabelled rows."""
    transfer = out / "transfer"
    say("generating the transfer set")
    source_flags = [flag for source in sources for flag in ("--source", str(source))]
    stages.run("generate", ["generate", *teachers, *source_flags, *INPUT_FLAGS,
                            "--combine", "geometric", "--temperature", str(args.temperature),
                            "--keep-teacher-logits", "--out", str(transfer)])
    return transfer


def _train_students(stages: _Stages, out: Path, labelled: Path, transfer: Path, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """The same small student twice: on the hard labels alone, and on the transfer set."""
    student = ["--student", "train.students:mlp", "--student-arg", "hidden=32", "--epochs", "60", "--batch-size", "32",
               "--optimizer", "adamw", "--lr", "3e-3", "--seed", str(args.seed)]
    say("training the hard-label student")
    stages.run("train students", ["train", "--data", str(labelled), *INPUT_FLAGS, "--label-column", "label", *student,
                                  "--out", str(out / "student-hard")])
    say("training the distilled student")
    stages.run("train students", ["train", "--transfer", str(transfer), "--alpha", "0.9", *student, "--out", str(out / "student-distilled")])


def _score_on_test_rows(stages: _Stages, out: Path, teachers: list[str], test: Path, args: argparse.Namespace,
                        say: Callable[[str], None]) -> list[tuple[str, float]]:
    """(model, accuracy) on the held-out rows: each teacher and the ensemble via a transfer
    set over the test rows (`inspect` scores it against the labels), the students via `eval`."""
    say("scoring on held-out rows")
    scored = out / "test-targets"
    stages.run("evaluate", ["generate", *teachers, "--source", str(test), *INPUT_FLAGS, "--combine", "geometric",
                            "--temperature", str(args.temperature), "--keep-teacher-logits", "--out", str(scored)])
    summary = stages.json("evaluate", ["inspect", str(scored), "--json"])
    scores = [(f"teacher {i + 1}", t["accuracy"]) for i, t in enumerate(summary["teachers"])]
    scores.append(("teacher ensemble (geometric)", summary["ensemble_accuracy"]))
    for name, run_dir in (("student, hard labels only", "student-hard"), ("student, distilled", "student-distilled")):
        metrics = stages.json("evaluate", ["eval", str(out / run_dir), "--data", str(test), "--json"])
        scores.append((name, metrics["accuracy"]))
    return scores


# -- the report --------------------------------------------------------------------


def _print_json(scores: list[tuple[str, float]], seconds: dict[str, float], test_rows: int) -> None:
    import json

    rows = [{"model": m, "accuracy": a, "errors": round((1 - a) * test_rows)} for m, a in scores]
    print(json.dumps({"rows": rows, "seconds": seconds}))


def _print_tables(scores: list[tuple[str, float]], seconds: dict[str, float], args: argparse.Namespace, rows_in_data: int) -> None:
    from rich.console import Console
    from rich.table import Table

    unlabelled = rows_in_data - args.test - args.labelled
    result = Table(title=f"transferset demo: {args.test} held-out digits ({args.labelled} labelled rows + {unlabelled} unlabelled)")
    for col in ("model", "accuracy", "errors"):
        result.add_column(col, justify="left" if col == "model" else "right")
    for name, acc in scores:
        result.add_row(name, f"{100 * acc:.2f}%", f"{round((1 - acc) * args.test)}")
    timing = Table(title="time per stage")
    timing.add_column("stage")
    timing.add_column("seconds", justify="right")
    for name, stage_seconds in seconds.items():
        timing.add_row(name, f"{stage_seconds:.1f}")
    timing.add_row("total", f"{sum(seconds.values()):.1f}")
    console = Console()
    console.print(result)
    console.print(timing)
