"""A diverged or chance-level student is stopped or flagged, never exported as a result
(train/health.py). Each rule is tested both ways: the case it catches and a healthy
run it must leave alone."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from test_train_cli import C, SIDE, _pixel_column, _pixels, write_labelled_parquet
from train.health import EXPLODING_FACTOR, MIN_STEPS_TO_JUDGE, at_chance, check_epoch
from train.config import TrainConfig
from transferset.errors import UserError

INPUT = ["--input-column", "pixels", "--input-shape", f"1,{SIDE},{SIDE}", "--input-scale", "1/16"]
TINY = ["--student-arg", "hidden=32", "--batch-size", "16"]
FIXES = ("--grad-clip", "--lr", "--warmup-fraction")
CFG = TrainConfig()


def _random_labels(path, rows, seed):
    """Inputs with labels drawn independently of them: nothing to learn."""
    labels = np.random.default_rng(seed).integers(0, C, rows)
    pq.write_table(pa.table({"pixels": _pixel_column(_pixels(rows, seed)), "label": pa.array(labels, type=pa.int64())}), path)
    return path


def _record(loss, baseline=2.0, epoch=3, accuracy=0.9, rows=1000, majority=0.1):
    return {"epoch": epoch, "step": 300, "train_loss": loss, "train_baseline": baseline,
            "eval": {"test.parquet": {"labelled": rows, "accuracy": accuracy, "per_class_rows": [int(rows * majority)] + [1] * 3}}}


# -- the rules, both ways ------------------------------------------------------------------


def test_exploding_rule_both_ways():
    assert check_epoch(_record(EXPLODING_FACTOR * 2.0 * 0.99, epoch=1), last=False, cfg=CFG) == []  # high, not 10x
    with pytest.raises(UserError, match="exploded"):
        check_epoch(_record(EXPLODING_FACTOR * 2.0 * 1.01, epoch=1), last=False, cfg=CFG)
    with pytest.raises(UserError, match="the loss is nan"):
        check_epoch(_record(float("nan")), last=False, cfg=CFG)


def test_last_epoch_rules_both_ways():
    assert check_epoch(_record(1.0), last=True, cfg=CFG) == []  # learning: below the constant, above chance
    assert check_epoch(_record(2.5), last=True, cfg=CFG) == ["diverged"]  # above the constant, but accurate
    assert check_epoch(_record(1.0, accuracy=0.1), last=True, cfg=CFG) == ["chance_level"]
    with pytest.raises(UserError, match="no better than a constant prediction .* chance level"):
        check_epoch(_record(2.5, accuracy=0.1), last=True, cfg=CFG)  # collapsed: both
    short = {**_record(2.5, accuracy=0.1), "step": MIN_STEPS_TO_JUDGE - 1}  # too few steps to call it a collapse
    assert check_epoch(short, last=True, cfg=CFG) == ["diverged", "chance_level"]
    assert check_epoch(_record(2.5, accuracy=0.1), last=False, cfg=CFG) == []  # only judged after the last epoch


def test_chance_is_the_majority_rate_within_two_standard_errors():
    assert at_chance(0.105, 10_000, 0.1) and not at_chance(0.105, 100_000, 0.1)  # 2 SE = 0.006 at 10k rows, 0.0019 at 100k
    assert at_chance(0.5, 100, 0.5) and not at_chance(0.7, 100, 0.5)


# -- through the CLI -------------------------------------------------------------------------


def test_exploding_run_stops_with_one_line_and_publishes_nothing(tmp_path):
    data, out = write_labelled_parquet(tmp_path / "train.parquet", rows=160, seed=3), tmp_path / "run"
    args = ["train", "--data", data, *INPUT, *TINY, "--lr", "50", "--epochs", "3", "--out", out]
    for attempt in range(2):  # rerunning the same command stops again: it never turns into a result
        proc = run_cli(*args, timeout=60)
        assert proc.returncode == 2, proc.stderr
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith("transferset train: error: training diverged") and all(f in line for f in FIXES), line
        assert "Traceback" not in proc.stderr and proc.stdout == ""
        assert not (out / "student.pt2").exists() and not (out / "student.pt").exists()
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        assert last["health"] == ["stopped", "diverged"]
        config = json.loads((out / "config.json").read_text())
        assert config["finished"] is False and "training diverged" in config["stopped"]


def test_collapsed_run_on_unlearnable_labels_stops(tmp_path):
    """Labels independent of the inputs and a tiny lr: the loss stays at the constant
    prediction's and the accuracy at chance, the collapse the CNN of the issue showed."""
    data = _random_labels(tmp_path / "noise.parquet", 400, seed=1)  # 25 steps an epoch: 4 epochs reach MIN_STEPS_TO_JUDGE
    proc = run_cli("train", "--data", data, *INPUT, *TINY, "--lr", "1e-6", "--epochs", "4", "--out", tmp_path / "run", timeout=60)
    assert proc.returncode == 2 and "no better than a constant prediction" in proc.stderr and "chance level" in proc.stderr
    assert not (tmp_path / "run" / "student.pt2").exists()


def test_chance_level_eval_is_warned_and_marked_but_a_healthy_run_is_not(tmp_path):
    data = write_labelled_parquet(tmp_path / "train.parquet", rows=320, seed=3)
    noise = _random_labels(tmp_path / "noise.parquet", 2000, seed=2)  # an eval set nobody can beat chance on
    healthy = run_cli("train", "--data", data, *INPUT, *TINY, "--epochs", "4", "--eval", data, "--out", tmp_path / "ok", "--quiet", timeout=60)
    assert healthy.returncode == 0 and "warning" not in healthy.stderr, healthy.stderr
    assert "health" not in json.loads((tmp_path / "ok" / "config.json").read_text())["final"]

    proc = run_cli("train", "--data", data, *INPUT, *TINY, "--epochs", "4", "--eval", noise, "--out", tmp_path / "run", "--quiet", timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "warning: the student did not learn (its accuracy on" in proc.stderr and str(noise) in proc.stderr and "--grad-clip" in proc.stderr
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["health"] == ["chance_level"]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["final"]["health"] == ["chance_level"]
