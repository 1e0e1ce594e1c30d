"""benchmarks/hinton_mnist/run.py: the Hinton et al. MNIST study, run through the CLI only.

The end-to-end test runs `--protocol smoke` (a few thousand real MNIST rows, tiny nets)
and checks the result file and the command log; the report test feeds fixed CLI outputs
for two seeds through the aggregation and checks the arithmetic by hand.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pyarrow.parquet as pq
import pytest

from conftest import shared_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPT_DIR = ROOT / "benchmarks" / "hinton_mnist"
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
ROWS = {"teacher", "ensemble_arithmetic", "ensemble_geometric", "hard", "soft_geo", "soft_arith", "soft_hard_geo",
        "no3_nobias", "no3_paper_bias", "no3_val_bias", "few_hard", "few_soft"}
SUBCOMMANDS = {"convert", "train", "generate", "inspect", "eval"}


@pytest.mark.slow  # ~40 CLI processes (~80 s on 2 cores): `pytest -m slow`
def test_smoke_protocol_covers_every_row_through_the_cli_only(tmp_path):
    shared_dataset(MNIST / "train-images-idx3-ubyte.gz")
    work = tmp_path / "hinton"
    argv = [sys.executable, str(SCRIPT_DIR / "run.py"), "--protocol", "smoke", "--seeds", "0", "--work", str(work)]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((work / "results.json").read_text())
    assert set(results["rows"]) == ROWS
    n = results["test_rows"]
    assert n == 1000  # the smoke protocol's test rows 0:1000
    for key, row in results["rows"].items():
        runs = row["runs"].values()
        assert len(runs) == (2 if key == "teacher" else 1), key  # 2 smoke teachers; 1 seed
        for run in runs:
            assert 0 <= run["errors"] <= n and run["rows"] == n, (key, run)
            if key.startswith("no3"):
                assert 0 <= run["class_errors"] <= run["class_rows"] == results["class_rows_test"]
    # The bias only moves predictions towards class 3: never fewer threes right.
    assert results["rows"]["no3_paper_bias"]["runs"]["seed-0"]["class_errors"] <= results["rows"]["no3_nobias"]["runs"]["seed-0"]["class_errors"]
    assert results["bias"]["chosen"]["seed-0"] in results["settings"]["bias_grid"]
    assert results["rows"]["no3_val_bias"]["runs"]["seed-0"]["bias"] == results["bias"]["chosen"]["seed-0"]
    assert set(results["gap_closed"]) >= {"vs_mean_single_teacher", "vs_geometric_ensemble", "paper"}
    assert set(results["timings"]["stages"]) == {"convert", "train teachers", "generate", "train students", "evaluate"}

    # Only `transferset` commands, one per task, each logged.
    commands = (work / "commands.txt").read_text().splitlines()
    assert commands and len(commands) == len(results["timings"]["tasks"]) == len(results["commands"])
    for line in commands:
        words = shlex.split(line)
        assert words[0] == "transferset" and words[1] in SUBCOMMANDS, line
    assert any("--exclude-class 3" in c and c.split()[1] == "convert" for c in commands)
    assert len(list((work / "logs").iterdir())) == len(commands)
    # The omit-3 source really has no 3 (the converter's doing, checked here with pyarrow).
    assert 3 not in set(pq.read_table(work / "data" / "no3.parquet", columns=["label"]).column("label").to_pylist())

    table = (work / "results.md").read_text()
    assert "| model | paper | ours |" in table and "| 146 |" in table and "| 74 |" in table
    assert table.strip() in proc.stdout

    # A second run into the same --work is refused (no torch needed to say so).
    again = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "--resume" in again.stderr


class _FakeRunner:
    """What report.build_results reads from a Runner: outputs by task name, timings, commands."""

    def __init__(self, outputs: dict, commands: Path) -> None:
        self.outputs, self.commands = outputs, commands

    def output(self, name: str):
        return self.outputs[name]

    def timings(self):
        return {"stages": {"evaluate": {"tasks": 1, "task_seconds": 2.0, "wall_seconds": 2.0}}, "tasks": {}, "total_wall_seconds": 2.0}


def _eval(errors: int, threes: int, rows: int = 1000, three_rows: int = 101) -> dict:
    per_class = [0] * 10
    per_class[3] = threes
    per_class[0] = errors - threes
    return {"errors": errors, "labelled": rows, "accuracy": 1 - errors / rows, "per_class_errors": per_class,
            "per_class_rows": [100] * 3 + [three_rows] + [100] * 6}


def test_report_aggregates_seeds_and_the_gap_closed(tmp_path):
    sys.path.insert(0, str(SCRIPT_DIR))
    try:
        import report
        from run import PAPER_BIAS, STUDENTS, choose_bias
    finally:
        sys.path.remove(str(SCRIPT_DIR))
    errors = {"hard": (30, 40), "soft_geo": (20, 22), "soft_arith": (21, 21), "soft_hard_geo": (19, 23),
              "no3_soft": (50, 60), "few_hard": (90, 100), "few_soft": (70, 80)}
    outputs = {}
    for s in (0, 1):
        for name, per_seed in errors.items():
            outputs[f"eval-s{s}-{name}"] = _eval(per_seed[s], 40 if name == "no3_soft" else 1)
        outputs[f"val-s{s}-bias0"] = _eval(70, 45)
        outputs[f"val-s{s}-bias2"] = _eval(40 + s, 10)   # the best on validation
        outputs[f"val-s{s}-bias3.5"] = _eval(45, 3)
        outputs[f"test-s{s}-bias2"] = _eval(33, 12)
        outputs[f"test-s{s}-bias3.5"] = _eval(36 + s, 4)
    teachers = [{"accuracy": 0.99}, {"accuracy": 0.988}]
    outputs["inspect-test_geometric"] = {"labelled_rows": 1000, "ensemble_accuracy": 0.991, "teachers": teachers}
    outputs["inspect-test_arithmetic"] = {"labelled_rows": 1000, "ensemble_accuracy": 0.992, "teachers": teachers}
    commands = tmp_path / "commands.txt"
    commands.write_text("transferset eval x --json\n")
    settings = {"protocol": "test", "seeds": [0, 1], "omitted_class": 3, "paper_bias": PAPER_BIAS, "teachers": 2,
                "teacher_hidden": "1200,1200", "teacher_jitter": 2, "student_hidden": "800,800", "bias_grid": (0.0, 2.0, 3.5),
                "teacher_dropout": 0.3, "teacher_input_dropout": 0.1, "teacher_epochs": 1, "teacher_lr": 0.1,
                "student_epochs": 1, "few_epochs": 1, "student_lr": 0.1, "distill_lr": 0.1, "temperature": 20.0,
                "soft_hard_alpha": 0.9, "batch_size": 128, "device": "cpu", "jobs": 1, "threads": 1,
                "train_rows": "0:9", "val_rows": "9:10", "few_rows": "0:3"}
    grid = SimpleNamespace(bias_grid=settings["bias_grid"])
    chosen = {s: choose_bias(_FakeRunner(outputs, commands), grid, s) for s in (0, 1)}
    assert chosen == {0: 2.0, 1: 2.0}
    results = report.build_results(_FakeRunner(outputs, commands), settings, STUDENTS, chosen)

    rows = results["rows"]
    assert set(rows) == ROWS
    assert [r["errors"] for r in rows["teacher"]["runs"].values()] == [10, 12]
    assert rows["ensemble_geometric"]["errors"]["mean"] == 9 and rows["ensemble_arithmetic"]["errors"]["mean"] == 8
    assert rows["hard"]["errors"] == {"n": 2, "mean": 35.0, "sd": pytest.approx(50 ** 0.5), "min": 30, "max": 40}
    assert rows["no3_nobias"]["threes"]["mean"] == 40
    assert [r["errors"] for r in rows["no3_paper_bias"]["runs"].values()] == [36, 37]
    assert rows["no3_val_bias"]["threes"]["mean"] == 12 and rows["no3_val_bias"]["paper_errors"] is None
    assert rows["no3_paper_bias"]["paper_errors"] == 109 and rows["no3_paper_bias"]["paper_threes"] == 14
    gap = results["gap_closed"]
    assert gap["vs_mean_single_teacher"] == pytest.approx((35 - 21) / (35 - 11))
    assert gap["vs_geometric_ensemble"] == pytest.approx((35 - 21) / (35 - 9))
    assert gap["per_seed_vs_mean_single_teacher"]["seed-1"] == pytest.approx((40 - 22) / (40 - 11))
    assert gap["paper"] == pytest.approx(72 / 79)

    table = report.render_markdown(results)
    assert "| 146 | 35.0 ± 7.1 (30, 40) |" in table
    assert "**58%**" in table  # 14 / 24
    assert "seed-0: 2, seed-1: 2" in table


@pytest.mark.parametrize("protocol", ["cpu", "cpu-cnn", "paper", "smoke"])
def test_each_protocols_teacher_flags_build_a_teacher(protocol):
    """The flags run.py passes to `train` for the teachers name a student and arguments that exist."""
    import torch
    from train.students import build_student, parse_student_args

    sys.path.insert(0, str(SCRIPT_DIR))
    try:
        from run import PROTOCOLS
    finally:
        sys.path.remove(str(SCRIPT_DIR))
    argv = PROTOCOLS[protocol].teacher_args()
    spec = argv[argv.index("--student") + 1] if "--student" in argv else "train.students:mlp"
    student_args = parse_student_args([argv[i + 1] for i, flag in enumerate(argv) if flag == "--student-arg"])
    teacher = build_student(spec, student_args, 10, (1, 28, 28))
    assert teacher(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert any(isinstance(m, torch.nn.Conv2d) for m in teacher.modules()) == (protocol == "cpu-cnn")
