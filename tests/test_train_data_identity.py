"""A run's resume key holds its --data files' content, not just their size, rows and schema.

The user's case: `train --data F` is killed, F is rewritten (same size, rows and
schema, other values), and the same command is run again. Before, it said
"resuming" and trained a student on a mix of both files; now it is refused with
one line naming the file.
"""

import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import ROOT, run_cli

SIDE = 6


def _write_same_layout(path, labels: np.ndarray) -> None:
    """Fixed-width, uncompressed, no dictionary, no statistics: the file's size
    depends on the row count only, so two label columns give files of equal size."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 16, (len(labels), SIDE * SIDE)).astype(np.uint8)
    table = pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), SIDE * SIDE),
                      "label": pa.array(labels, type=pa.int64())})
    pq.write_table(table, path, compression="none", use_dictionary=False, write_statistics=False)


def _train_args(data, out):
    return ["train", "--data", data, "--input-shape", f"1,{SIDE},{SIDE}", "--input-scale", "1/16", "--student-arg", "hidden=8",
            "--batch-size", "8", "--checkpoint-every", "1", "--out", out]


def test_changed_data_file_with_same_size_rows_and_schema_is_refused_after_a_kill(tmp_path):
    data, out = tmp_path / "train.parquet", tmp_path / "run"
    labels = np.arange(400) % 4
    _write_same_layout(data, labels)
    size = data.stat().st_size

    # A real process, killed once it has written a checkpoint (the user's Ctrl-C).
    env = {"PYTHONPATH": str(ROOT)}
    import os

    proc = subprocess.Popen([sys.executable, "-m", "cli", *map(str, _train_args(data, out)), "--epochs", "1000", "--quiet"],
                            cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "checkpoints").glob("step-*.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        proc.kill()
        proc.wait()
    assert list((out / "checkpoints").glob("step-*.pt")), "the run wrote no checkpoint before the kill"

    # The same file name, size, row count and schema; other labels.
    _write_same_layout(data, (labels + 1) % 4)
    assert data.stat().st_size == size

    rerun = run_cli(*_train_args(data, out), "--epochs", "1000", "--quiet", timeout=60)
    assert rerun.returncode == 2, rerun.stderr
    lines = rerun.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in rerun.stderr
    assert f"the content of --data {data}" in lines[0] and "--overwrite" in lines[0]
    assert "resuming" not in rerun.stderr


def test_unchanged_data_still_resumes(tmp_path):
    data, out = tmp_path / "train.parquet", tmp_path / "run"
    _write_same_layout(data, np.arange(64) % 4)
    first = run_cli(*_train_args(data, out), "--epochs", "1", "--quiet", timeout=60)
    assert first.returncode == 0, first.stderr
    again = run_cli(*_train_args(data, out), "--epochs", "2", timeout=60)  # more epochs: --epochs changes the trajectory
    assert again.returncode == 2 and "changed: --epochs" in again.stderr
    same = run_cli(*_train_args(data, out), "--epochs", "1", timeout=60)
    assert same.returncode == 0 and "already trained" in same.stderr, same.stderr
