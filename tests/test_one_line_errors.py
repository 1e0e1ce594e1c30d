"""Smaller hardening of issue 14, item 7: errors are exactly one line (no library
warnings, no raw newlines), a float64 value beyond float32 says so, `convert`
refuses an --out below a file, and a killed convert's temp file is cleaned up."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from conftest import ROOT, TESTS, run_cli

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


def one_line(proc) -> str:
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_a_float64_value_beyond_float32_is_named_as_an_overflow(tmp_path):
    pixels = np.random.default_rng(0).random((40, 64))
    pixels[17, 3] = 1e300
    column = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 64)
    pq.write_table(pa.table({"pixels": column}), tmp_path / "s.parquet")
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", tmp_path / "s.parquet", *BASE,
                   "--batch-size", "16", "--out", tmp_path / "o")
    assert proc.returncode == 2
    line = one_line(proc)
    assert "row 17 holds 1e+300, which overflows float32" in line and "NaN" not in line

    pixels[17, 3] = np.nan  # a real NaN is still called one
    pq.write_table(pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 64)}), tmp_path / "n.parquet")
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", tmp_path / "n.parquet", *BASE, "--out", tmp_path / "o2")
    assert proc.returncode == 2 and "has NaN/Inf values (rows [17])" in one_line(proc)


def test_convert_out_below_a_file_is_one_line(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((3, 4), dtype=np.uint8))
    (tmp_path / "a_file").write_text("x")
    for out in (tmp_path / "a_file" / "x.parquet", tmp_path / "a_file" / "deeper" / "x.parquet"):
        proc = run_cli("convert", "--images", tmp_path / "x.npy", "--out", out)
        assert proc.returncode == 2
        assert "is a file, not a folder; give a path in a folder" in one_line(proc)


def test_paths_with_newlines_and_library_text_stay_on_one_line(tmp_path):
    proc = run_cli("convert", "--images", tmp_path / "no\nsuch.npy", "--out", tmp_path / "x.parquet")
    assert proc.returncode == 2 and "no\\nsuch.npy" in one_line(proc)
    bad = tmp_path / "bad\nname.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", bad, *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "bad\\nname.parquet" in one_line(proc)


def noisy_tuple_teacher():
    """A teacher whose forward warns (as libraries do) and returns an ambiguous tuple."""
    import warnings

    import torch

    from teacher_models import mlp

    class Noisy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = mlp(1)

        def forward(self, x):
            warnings.warn("some library's deprecation notice", UserWarning)
            np.float32(1e38) * np.float32(1e38)  # numpy: RuntimeWarning, overflow
            out = self.inner(x)
            return out, out

    return Noisy()


def test_library_warnings_do_not_reach_stderr(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 16, size=(10, 64), dtype=np.uint8)
    pq.write_table(pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 64)}), tmp_path / "s.parquet")
    proc = run_cli("generate", "--teacher", "test_one_line_errors:noisy_tuple_teacher", "--source", tmp_path / "s.parquet",
                   *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--teacher-output INDEX" in one_line(proc)
    debug = run_cli("generate", "--teacher", "test_one_line_errors:noisy_tuple_teacher", "--source", tmp_path / "s.parquet",
                    *BASE, "--out", tmp_path / "o", "--debug")
    assert "deprecation notice" in debug.stderr  # --debug shows everything


def _convert(images, out):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    return subprocess.Popen([sys.executable, "-m", "cli", "convert", "--images", str(images), "--out", str(out), "--quiet",
                             "--row-group-rows", "1000"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_a_killed_converts_temp_file_is_removed_by_the_next_convert(tmp_path):
    images = tmp_path / "x.npy"
    np.save(images, np.random.default_rng(1).integers(0, 256, size=(40000, 784), dtype=np.uint8))
    out = tmp_path / "out" / "x.parquet"
    for _ in range(3):  # kill mid-write: the temp file exists, its process dies with it
        proc = _convert(images, out)
        mine = out.parent / f".x.parquet.tmp-{proc.pid}"
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and not mine.exists():
            time.sleep(0.01)
        assert proc.poll() is None, "convert finished before it could be killed; use a larger array"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Each rerun removed the temp file of the convert killed before it: one is left, the latest.
        assert [p.name for p in out.parent.glob(".x.parquet.tmp-*")] == [mine.name]
    assert not out.exists()
    # Another convert writing into the same folder meanwhile: its temp file is left alone.
    live = out.parent / f".other.parquet.tmp-{os.getpid()}"
    live.write_bytes(b"being written")
    run_cli("convert", "--images", images, "--out", out, "--quiet", check=True)
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == [live.name, "x.parquet"]
    assert pq.read_metadata(out).num_rows == 40000
