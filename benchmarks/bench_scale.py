"""Scale-out on one machine: `--engine ray` against `--engine local`, and torchrun students.

    python benchmarks/bench_scale.py [--rows 20000] [--repeat 3] [--devices cpu,cpu] [--ddp 2]

Real teachers: an ensemble of 3 MLPs 784-1200-1200-10 (bench_models) over the MNIST
training images, dense float16 targets, the same flags for both engines. Printed side by
side in one run:

    local        `transferset generate` in this process (LocalEngine)
    ray (warm)   the same with Ray already started here (ray.init before the clock) and
                 its worker processes warm: read tasks + teacher actors + our writer
    ray first    the first run after ray.init: worker processes start and import torch
    ray start    what `--engine ray` adds once per command when it starts Ray itself
    --devices    optional: one local process per device (whole commands, imports included)
    --ddp N      optional: a 784-800-800-10 student, one epoch of the local set, as
                 `transferset train` (one process, N torch threads) against `torchrun
                 --nproc-per-node N` (1 thread each): epoch seconds from metrics.jsonl
                 (the training loop alone) and whole commands

The issue's target is ray / local <= 1.15 with real teachers. Every ray run also starts
its actors, each loading torch and the teachers: that is in the ray time, as it is in a
user's. Medians of --repeat runs; the machine is shared and noisy, so read ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import cli  # noqa: E402
from bench_common import PIXELS, median_time, mnist_source  # noqa: E402
from transferset.format.manifest import read_manifest  # noqa: E402

TEACHERS = ["mlp1200_a", "mlp1200_b", "mlp1200_c"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--shard-rows", type=int, default=8192)
    parser.add_argument("--devices", help="also time `--devices D,D,...` (whole commands)")
    parser.add_argument("--ddp", type=int, help="also time torchrun students on this many processes")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work)


def run(args, work: Path) -> None:
    import ray

    from transferset.generate.ray_cluster import worker_env

    source = mnist_source(work, args.rows)
    common = ["generate", *[a for t in TEACHERS for a in ("--teacher", f"bench_models:{t}")], "--source", str(source),
              *PIXELS, "--batch-size", str(args.batch_size),
              "--shard-rows", str(args.shard_rows), "--combine", "geometric", "-T", "4", "--quiet"]

    def generate(out: Path, *extra: str):
        def go():
            shutil.rmtree(out, ignore_errors=True)
            assert cli.main([*common, *extra, "--out", str(out)]) == 0
        return go

    print(f"torch threads: {torch.get_num_threads()}, rows: {args.rows:,}, batch size: {args.batch_size}, "
          f"shard rows: {args.shard_rows}, teachers: 3 x MLP 784-1200-1200-10")
    t_local = median_time(generate(work / "local"), args.repeat)
    started = time.perf_counter()
    ray.init(include_dashboard=False, log_to_driver=False, runtime_env=worker_env())
    t_start = time.perf_counter() - started
    try:
        t_first = median_time(generate(work / "ray", "--engine", "ray"), 1)  # fresh worker processes import torch
        t_ray = median_time(generate(work / "ray", "--engine", "ray"), args.repeat)
        cpus = int(ray.cluster_resources().get("CPU", 0))
    finally:
        ray.shutdown()
    shards = lambda name: [pq.read_table(p) for p in read_manifest(work / name).shard_paths()]  # noqa: E731
    same = all(a.equals(b) for a, b in zip(shards("ray"), shards("local")))
    n = args.rows
    print(f"   local engine:               {t_local:7.2f} s  {n / t_local:10,.0f} rows/s")
    print(f"   ray engine, warm workers:   {t_ray:7.2f} s  {n / t_ray:10,.0f} rows/s   ({cpus} CPUs)")
    print(f"   ray engine, first run:      {t_first:7.2f} s  (Ray's worker processes start and import torch)")
    print(f"   ray start (once a command): {t_start:7.2f} s")
    print(f"   ratio ray / local:          {t_ray / t_local:7.3f}   (warm; target <= 1.15)")
    print(f"   ratio as a command:         {(t_start + t_first) / t_local:7.3f}   (start + first run) / local")
    print(f"   ray shards equal local's:   {same}")
    if args.devices:
        def whole(*extra):
            def go():
                out = work / "devices"
                shutil.rmtree(out, ignore_errors=True)
                subprocess.run([sys.executable, "-m", "cli", *common, *extra, "--out", str(out)], cwd=ROOT, check=True,
                               env={**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}"})
            return go
        t_one = median_time(whole(), args.repeat)
        t_many = median_time(whole("--devices", args.devices), args.repeat)
        print(f"   one process (whole command):       {t_one:7.2f} s")
        print(f"   --devices {args.devices} (whole command): {t_many:7.2f} s   ratio {t_many / t_one:.3f}")
    if args.ddp:
        ddp(args, work / "local")


def ddp(args, transfer: Path) -> None:
    """One process against torchrun with args.ddp processes, the same global batch."""
    import json

    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{HERE}"}
    train = ["train", "--transfer", str(transfer), "--student", "train.students:mlp", "--epochs", "1", "--batch-size", "512",
             "--device", "cpu", "--quiet"]
    runs = {"one process": [sys.executable, "-m", "cli", *train, "--threads", str(args.ddp)],
            f"torchrun x {args.ddp}": [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.ddp}",
                                       "-m", "cli", *train, "--threads", "1"]}
    results = {}
    for name, command in runs.items():
        epochs, wholes = [], []
        for i in range(args.repeat):
            out = transfer.parent / f"ddp-{i}"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            subprocess.run([*command, "--out", str(out)], cwd=ROOT, env=env, check=True, capture_output=True)
            wholes.append(time.perf_counter() - started)
            epochs.append(json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["seconds"])
        results[name] = (statistics.median(epochs), statistics.median(wholes))
        print(f"   student epoch, {name:14s} {results[name][0]:7.2f} s  (whole command {results[name][1]:.2f} s)")
    (one_epoch, one_whole), (many_epoch, many_whole) = results.values()
    print(f"   ratio torchrun / one process: {many_epoch / one_epoch:.3f} (epoch), {many_whole / one_whole:.3f} (command); "
          f"CPU-bound here: both use all {args.ddp} cores")


if __name__ == "__main__":
    main()
