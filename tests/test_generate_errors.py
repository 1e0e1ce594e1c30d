"""Bad input to `transferset generate`: one line, exit code 2, no traceback, nothing that looks valid."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, TESTS, run_cli, write_pixels_source

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


def _no_valid_output(out):
    return not (out / "_manifest.json").exists() and not list(out.glob("part-*.parquet")) if out.exists() else True


def _cases(tmp_path, lab, unl):
    notmodel = tmp_path / "notmodel.pt2"
    notmodel.write_text("not a model")
    notscript = tmp_path / "notmodel.pt"
    notscript.write_bytes(b"\x00" * 100)
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"pixels": pa.array([], type=pa.list_(pa.uint8(), 64)), "label": pa.array([], pa.int64())}), empty)
    badlabel = write_pixels_source(tmp_path / "badlabel.parquet", np.zeros((5, 64), np.uint8), [0, 1, 12, 3, 4])
    short = write_pixels_source(tmp_path / "short.parquet", np.zeros((5, 60), np.uint8), [0, 1, 2, 3, 4], fixed=False)
    nan_rows = np.zeros((6, 64), np.uint8)
    nan_rows[[1, 4], 0] = 16
    nans = write_pixels_source(tmp_path / "nan.parquet", nan_rows, [0] * 6)
    strlabels = tmp_path / "strlabels.parquet"
    pq.write_table(pa.table({"pixels": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(128, np.uint8)), 64), "label": ["a", "b"]}), strlabels)
    t = ["--teacher", "teacher_models:tiny_a"]
    return {
        "teacher file missing": (["--teacher", tmp_path / "nope.pt2", "--source", lab, *BASE], "does not exist"),
        "teacher not a model (.pt2)": (["--teacher", notmodel, "--source", lab, *BASE], "not a torch.export program"),
        "teacher not a model (other)": (["--teacher", notscript, "--source", lab, *BASE], "not a model transferset can load"),
        "factory not a module": (["--teacher", "teacher_models:not_a_module", "--source", lab, *BASE], "not a torch.nn.Module"),
        "factory module missing": (["--teacher", "no_such_pkg.models:net", "--source", lab, *BASE], "cannot import"),
        "teachers disagree on C": ([*t, "--teacher", "teacher_models:seven_classes", "--source", lab, *BASE], "disagree on the number of classes"),
        "teacher returns NaN": (["--teacher", "teacher_models:nan_teacher", "--source", nans, *BASE], "NaN/Inf logits for 2 rows"),
        "input column missing": ([*t, "--source", lab, *BASE[2:], "--input-column", "image"], "no input column 'image'"),
        "input wrong size": ([*t, "--source", short, *BASE], "has 60 values but --input-shape 1,8,8 needs 64"),
        "input shape mismatch (fixed)": ([*t, "--source", lab, "--input-column", "pixels", "--input-shape", "1,28,28"], "needs 784"),
        "empty source": ([*t, "--source", empty, *BASE], "is empty"),
        "source missing": ([*t, "--source", tmp_path / "missing.parquet", *BASE], "does not exist"),
        "label outside [0, C)": ([*t, "--source", badlabel, *BASE], "label 12, outside [0, 10)"),
        "labels are strings": ([*t, "--source", strlabels, *BASE], "not integers"),
        "non-positive temperature": ([*t, "--source", lab, *BASE, "-T", "0"], "--temperature must be a positive number"),
        "unknown combine": ([*t, "--source", lab, *BASE, "--combine", "median"], "unknown --combine 'median'"),
        "bad storage dtype": ([*t, "--source", lab, *BASE, "--storage-dtype", "int8"], "--storage-dtype must be float16 or float32"),
        "negative batch size": ([*t, "--source", lab, *BASE, "--batch-size", "-5"], "--batch-size must be positive"),
        "weights before teacher": (["--weights", "w.pt", *t, "--source", lab, *BASE], "must follow the --teacher"),
    }


CASES = [
    "teacher file missing", "teacher not a model (.pt2)", "teacher not a model (other)", "factory not a module",
    "factory module missing", "teachers disagree on C", "teacher returns NaN", "input column missing", "input wrong size",
    "input shape mismatch (fixed)", "empty source", "source missing", "label outside [0, C)", "labels are strings",
    "non-positive temperature", "unknown combine", "bad storage dtype", "negative batch size", "weights before teacher",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case, tmp_path, sources):
    args, expected = _cases(tmp_path, *sources)[case]
    out = tmp_path / "out"
    proc = run_cli("generate", *args, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert expected in proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert _no_valid_output(out)


def test_existing_non_transfer_set_directory_is_refused_and_kept(tmp_path, sources):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *BASE, "--out", out, "--overwrite")
    assert proc.returncode == 2 and "is not a transfer set" in proc.stderr
    assert (out / "precious.txt").read_text() == "keep me"


def test_kill_9_then_rerun_gives_the_uninterrupted_result(tmp_path):
    rng = np.random.default_rng(7)
    src = write_pixels_source(tmp_path / "big.parquet", rng.integers(0, 16, (4001, 64), dtype=np.uint8),
                              rng.integers(0, 10, 4001).tolist(), row_group_size=333)
    args = ["generate", "--teacher", "teacher_models:slow", "--teacher", "teacher_models:tiny_a", "--source", src, *BASE,
            "--batch-size", "25", "--shard-rows", "300", "--row-group-rows", "100", "-T", "5", "--combine", "arithmetic"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cli", *map(str, args), "--out", str(out)], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 4:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "_shards").glob("*.json")))
    assert 4 <= done < 14, "the kill must land mid-run"
    assert not (out / "_manifest.json").exists()

    resumed = run_cli(*args, "--out", out, check=True)
    assert f"resuming: {done} of 14 shards" in resumed.stderr or done >= 4
    assert not list(out.glob(".*tmp-*"))
    run_cli(*args, "--out", tmp_path / "clean", check=True)
    a = pl.read_parquet(f"{out}/*.parquet")
    b = pl.read_parquet(f"{tmp_path}/clean/*.parquet")
    assert a.height == 4001 and a["id"].n_unique() == 4001
    assert a.sort("id").equals(b.sort("id"))


def test_weights_load_safely_and_pickles_need_trust(tmp_path, sources):
    import torch

    import teacher_models

    trained = teacher_models.mlp(42)
    plain = tmp_path / "w.pt"
    torch.save(trained.state_dict(), plain)
    pickled = tmp_path / "pickled.pt"
    torch.save(teacher_models.PickledStateDict(trained.state_dict()), pickled)
    common = ["generate", "--source", sources[0], *BASE]

    run_cli(*common, "--teacher", "teacher_models:tiny_a", "--weights", plain, "--out", tmp_path / "a", check=True)
    refused = run_cli(*common, "--teacher", "teacher_models:tiny_a", "--weights", pickled, "--out", tmp_path / "b")
    assert refused.returncode == 2 and "--trust-checkpoint" in refused.stderr and "Traceback" not in refused.stderr
    assert _no_valid_output(tmp_path / "b")
    run_cli(*common, "--teacher", "teacher_models:tiny_a", "--weights", pickled, "--trust-checkpoint", "--out", tmp_path / "b", check=True)
    # Same weights, same targets: the loaded state dict really replaced the factory's own init.
    a = pl.read_parquet(f"{tmp_path}/a/*.parquet")["logits"].to_list()
    b = pl.read_parquet(f"{tmp_path}/b/*.parquet")["logits"].to_list()
    assert a == b
    init = tmp_path / "init"
    run_cli(*common, "--teacher", "teacher_models:tiny_a", "--out", init, check=True)
    assert pl.read_parquet(f"{init}/*.parquet")["logits"].to_list() != a


def test_identical_sources_would_duplicate_ids_and_are_refused(tmp_path, sources):
    lab, _ = sources
    copy = tmp_path / "copy.parquet"
    copy.write_bytes(lab.read_bytes())
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", lab, "--source", copy, *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "identical content" in proc.stderr and "Traceback" not in proc.stderr
