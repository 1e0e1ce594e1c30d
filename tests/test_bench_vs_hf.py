"""benchmarks/bench_vs_hf.py runs end to end (tiny sizes and teachers): every arm as its
own process, the table, and the check that the generate and Hugging Face arms store the
same targets (when `datasets` is installed; without it, --skip-hf is what runs)."""

from __future__ import annotations

import pytest

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

from conftest import shared_dataset

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"


@pytest.mark.slow  # a benchmark's smoke run (~35 s): `pytest -m slow`
def test_one_invocation_prints_the_whole_table(tmp_path):
    shared_dataset(MNIST / "train-images-idx3-ubyte.gz")
    with_hf = importlib.util.find_spec("datasets") is not None
    argv = [sys.executable, "benchmarks/bench_vs_hf.py", "--sizes", "300,600", "--rounds", "1", "--teachers", "2",
            "--teacher-width", "8", "--threads", "1", "--work", str(tmp_path / "work"), *([] if with_hf else ["--skip-hf"])]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    arms = ["generate", "hf", "bare"] if with_hf else ["generate", "bare"]
    for rows in ("300", "600"):
        for arm in arms:
            assert re.search(rf"^\| {rows} \| {arm} \| [\d.]+ \| [\d.]+ \| [\d,]+ \| [\d.]+ \| [\d,]+ \|$", out, re.M), (rows, arm, out)
        assert re.search(rf"^\| {rows} \(wall\) \| [\d.]+ \|", out, re.M), out
    if with_hf:
        diffs = [float(d) for d in re.findall(r"largest \|difference\| (\S+)", out)]
        assert len(diffs) == 2 and max(diffs) < 0.05, out  # the same targets, up to float16 rounding


@pytest.mark.slow  # a benchmark's smoke run (~20 s): `pytest -m slow`
def test_profile_generate_times_each_step_and_the_teachers_waits():
    shared_dataset(MNIST / "train-images-idx3-ubyte.gz")
    argv = [sys.executable, "benchmarks/profile_generate.py", "--rows", "600", "--teacher-width", "8", "--batch-size", "64", "--waits"]
    proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for step in ("read + decode Parquet rows", "teachers", "NaN check + combine", "SHA-256 of the shard",
                 "waiting for the reader's next batch", "waiting for the writer's queue", "the whole command"):
        assert re.search(rf"^\| {re.escape(step)} \| [\d.]+ \|", out, re.M), (step, out)
