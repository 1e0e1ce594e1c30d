"""`generate --engine ray`: the same shards as `--engine local`, resumable after a kill,
and one-line refusals (Ray missing, a cluster that cannot be reached, stray flags).

One Ray end-to-end run is in the default suite (Ray started here with 2 CPUs, shut
down after: ~5 s to start, ~5 s for the first actor to load torch and the teachers);
the kill-and-rerun test starts Ray twice more and is marked `slow`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, TESTS, run_cli, run_in_process, write_pixels_source
from transferset.format.manifest import read_manifest

ray = pytest.importorskip("ray")

PIXELS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


@pytest.fixture(scope="module")
def local_ray():
    from transferset.generate.ray_cluster import worker_env

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env=worker_env())
    yield
    ray.shutdown()


def _shards(directory) -> list[pa.Table]:
    return [pq.read_table(p) for p in read_manifest(directory).shard_paths()]


def test_ray_writes_the_shards_local_writes(tmp_path, sources, local_ray):
    """Shard by shard, every column (ids, labels, targets, every member's logits, inputs)
    equal. The plan has short shards in a row (3, 3 and 5 rows, under one 50-row batch),
    which Ray bundles into one batch unless the engine keeps teacher batches apart."""
    rng = np.random.default_rng(1)
    tiny = [write_pixels_source(tmp_path / f"tiny{n}.parquet", rng.integers(0, 16, (n, 64), dtype=np.uint8)) for n in (3, 5)]
    common = ["generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", *PIXELS,
              "--source", sources[0], "--source", sources[1], "--source", tiny[0], "--source", tiny[1],
              "--combine", "arithmetic", "-T", "3", "--keep-teacher-logits",
              "--batch-size", "50", "--shard-rows", "200", "--row-group-rows", "64", "--quiet"]
    run_in_process(*common, "--out", tmp_path / "local", check=True)
    ray_run = run_in_process(*common, "--engine", "ray", "--out", tmp_path / "ray", check=True)
    assert ray_run.stderr == ""  # Ray's own logs stay off the terminal
    local, via_ray = read_manifest(tmp_path / "local"), read_manifest(tmp_path / "ray")
    assert [s.rows for s in via_ray.shards] == [s.rows for s in local.shards] == [200, 200, 117, 200, 3, 3, 5]
    for index, (a, b) in enumerate(zip(_shards(tmp_path / "ray"), _shards(tmp_path / "local"))):
        assert a.schema.equals(b.schema), f"shard {index}: schemas differ"
        assert a.equals(b), f"shard {index}: values differ"
        assert [g.num_rows for g in pq.ParquetFile(via_ray.shard_paths()[index]).iter_batches(64)] == \
               [g.num_rows for g in pq.ParquetFile(local.shard_paths()[index]).iter_batches(64)]


def test_read_tasks_pad_every_teacher_batch_to_the_batch_size(tmp_path):
    """What Ray's batcher sees: whole --batch-size units, padding marked -1, real rows in order."""
    from transferset.generate.ray_engine import FIRST_ROW, SHARD
    from transferset.generate.ray_read import batch_ranges, read_padded
    from transferset.inputs import InputSpec
    from transferset.sources import ShardPlan, open_source

    pixels = np.arange(117 * 4, dtype=np.uint8).reshape(117, 4)
    source = open_source(str(write_pixels_source(tmp_path / "s.parquet", pixels, list(range(117)), row_group_size=40)), "label")
    cfg = SimpleNamespace(input_spec=InputSpec(columns=("pixels",), shape=(4,)), label_column="label", id_column=None, batch_size=25)
    context = SimpleNamespace(cfg=cfg, sources=[source])
    plan = ShardPlan(index=7, source=0, start=10, stop=117)  # 107 rows: 4 batches of 25 and one of 7
    (whole,) = batch_ranges(plan, context)
    table = read_padded(whole, context)
    assert table.num_rows == 125
    first = table.column(FIRST_ROW).to_pylist()
    assert first == [r for r in (10, 35, 60, 85) for _ in range(25)] + [110] * 7 + [-1] * 18
    assert set(table.column(SHARD).to_pylist()) == {7}
    real = np.array(first) >= 0
    labels = np.array(table.column("label").to_pylist())[real]
    assert labels.tolist() == list(range(10, 117))


def test_ranges_hold_whole_batches(tmp_path, monkeypatch):
    from transferset.generate import ray_read
    from transferset.sources import ShardPlan, open_source

    pixels = np.random.default_rng(0).integers(0, 256, (1000, 64), dtype=np.uint8)  # incompressible
    source = open_source(str(write_pixels_source(tmp_path / "s.parquet", pixels)), None)
    context = SimpleNamespace(cfg=SimpleNamespace(batch_size=30), sources=[source])
    monkeypatch.setattr(ray_read, "RANGE_BYTES", 64 * 100)  # ~100 rows of 64 bytes: 3 batches a range
    ranges = ray_read.batch_ranges(ShardPlan(0, 0, 0, 1000), context)
    assert ranges[0].start == 0 and ranges[-1].stop == 1000
    assert all(a.stop == b.start for a, b in zip(ranges, ranges[1:]))
    assert all(r.rows % 30 == 0 for r in ranges[:-1]) and len(ranges) > 1


def test_without_ray_installed_one_line_names_the_extra(tmp_path, sources, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    out = tmp_path / "out"
    proc = run_in_process("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *PIXELS,
                          "--engine", "ray", "--out", out)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "pip install 'transferset[ray]'" in proc.stderr
    assert not out.exists()


def test_unreachable_address_fails_fast_naming_it(tmp_path, sources):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out"
    started = time.monotonic()
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *PIXELS,
                   "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--out", out, timeout=60)
    assert time.monotonic() - started < 30
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and f"127.0.0.1:{port}" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--ray-actors", "2"], ["--ray-address", "auto"]])
def test_ray_flags_need_the_ray_engine(tmp_path, sources, flag):
    proc = run_in_process("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *PIXELS,
                          *flag, "--out", tmp_path / "out")
    assert proc.returncode == 2 and f"{flag[0]} applies to --engine ray" in proc.stderr


@pytest.mark.slow
def test_killed_ray_run_rerun_equals_an_uninterrupted_one(tmp_path):
    rng = np.random.default_rng(7)
    src = write_pixels_source(tmp_path / "big.parquet", rng.integers(0, 16, (2401, 64), dtype=np.uint8),
                              rng.integers(0, 10, 2401).tolist(), row_group_size=333)
    args = ["generate", "--teacher", "teacher_models:slow", "--teacher", "teacher_models:tiny_a", "--source", src, *PIXELS,
            "--batch-size", "25", "--shard-rows", "200", "--row-group-rows", "100", "-T", "5"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]))
    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "cli", *map(str, args), "--engine", "ray", "--out", str(out)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((out / "_shards").glob("*.json"))) < 3 and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list((out / "_shards").glob("*.json")))
    assert 3 <= done < 13, "the kill must land mid-run"
    assert not (out / "_manifest.json").exists()

    resumed = run_cli(*args, "--engine", "ray", "--out", out, check=True, timeout=300)
    assert f"resuming: {done} of 13 shards" in resumed.stderr
    assert not list(out.glob(".*tmp-*"))
    run_cli(*args, "--out", tmp_path / "clean", check=True)
    for index, (a, b) in enumerate(zip(_shards(out), _shards(tmp_path / "clean"))):
        assert a.equals(b), f"shard {index}: values differ"
    assert len(_shards(out)) == 13
