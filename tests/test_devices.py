"""`generate --devices D,D,...`: one process per device writes the set one process writes."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cli, run_in_process
from transferset.format.manifest import read_manifest, read_shard_records
from transferset.generate.per_device import child_argv

PIXELS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


def _common(sources) -> list:
    return ["generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", *PIXELS,
            "--source", sources[0], "--source", sources[1], "--batch-size", "50", "--shard-rows", "200", "--row-group-rows", "64"]


def test_two_cpu_processes_write_the_set_one_process_writes(tmp_path, sources):
    run_in_process(*_common(sources), "--quiet", "--out", tmp_path / "one", check=True)
    two = run_cli(*_common(sources), "--devices", "cpu,cpu", "--out", tmp_path / "two", check=True)
    assert "2 processes, on cpu, cpu" in two.stderr and f"wrote {tmp_path / 'two'}: 720 rows, 5 shards" in two.stderr
    one, both = read_manifest(tmp_path / "one"), read_manifest(tmp_path / "two")
    assert both.provenance.num_writers == 2
    assert [s.rows for s in both.shards] == [s.rows for s in one.shards] == [200, 200, 117, 200, 3]
    for index, (a, b) in enumerate(zip(both.shard_paths(), one.shard_paths())):
        assert pq.read_table(a).equals(pq.read_table(b)), f"shard {index}: values differ"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU for the failing child")
def test_a_failing_child_is_reported_naming_its_device(tmp_path, sources):
    out = tmp_path / "out"
    proc = run_cli(*_common(sources), "--devices", "cpu,cuda:0", "--out", out)
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "device cuda:0 (writer 1 of 2) failed: --device cuda:0 asked for CUDA" in line and "Traceback" not in proc.stderr
    assert not (out / "_manifest.json").exists()
    assert sorted(read_shard_records(out)) == [0, 2, 4]  # the CPU writer (0 of 2) finished its own shards


@pytest.mark.parametrize("extra, expected", [
    (["--device", "cpu"], "--devices and --device contradict"),
    (["--num-writers", "2"], "--devices and --num-writers contradict"),
    (["--writer-index", "0"], "--devices and --writer-index contradict"),
    (["--engine", "ray"], "--devices runs local engines"),
])
def test_contradicting_flags_are_refused(tmp_path, sources, extra, expected):
    proc = run_in_process(*_common(sources), "--devices", "cpu,cpu", *extra, "--out", tmp_path / "out")
    assert proc.returncode == 2 and expected in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_bad_device_is_refused(tmp_path, sources):
    proc = run_in_process(*_common(sources), "--devices", "cpu,gpu0", "--out", tmp_path / "out")
    assert proc.returncode == 2 and "'gpu0' is not a device" in proc.stderr


def test_child_arguments_drop_devices_and_name_the_writer():
    argv = ["generate", "--devices", "cuda:0,cuda:1", "--out", "x", "--devices=cpu"]
    assert child_argv(argv, "cuda:1", 1, 2, None) == ["generate", "--out", "x", "--device", "cuda:1", "--num-writers", "2",
                                                      "--writer-index", "1", "--quiet"]
    assert child_argv(["generate"], "cpu", 0, 2, 1)[-2:] == ["--threads", "1"]
