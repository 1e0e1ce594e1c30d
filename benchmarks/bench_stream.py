"""Benchmarks of the streaming reader (train/stream.py), printed side by side.

1. Streaming overhead: epoch time of an MLP student 784-800-800-10 (batch 128, SGD)
   trained on soft targets streamed from a Parquet transfer set, divided by the same
   training fed from tensors already in memory (a fresh random permutation per
   epoch and the same per-batch index gather an in-memory shuffled loader pays).
   Inputs are MNIST train (uint8, scaled by 1/255 as the InputSpec says) when
   ../shared/datasets/mnist is there, else random pixels; the soft targets come
   from a fixed random linear "teacher". Target: ratio <= 1.05.
2. Memory: peak RSS of one streamed epoch (no training) over 1M and 4M synthetic
   rows (C=100 float16 logits, 16 float32 features), each in its own process.
   Target: the 4M peak within 10% of the 1M peak.

Shards are written the way the generator writes them (transferset.writer's
Parquet options, 131,072-row shards, 32,768-row groups).

    python benchmarks/bench_stream.py            # the full run (~3 min on 2 cores)
    python benchmarks/bench_stream.py --quick    # a smoke run (~20 s)
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"  # ../shared beside the checkout


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--rows", type=int, default=60_000, help="rows of the training benchmark")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per mode (after one warm-up epoch each)")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--synthetic", action="store_true", help="random pixels instead of MNIST")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--mem-rows", default="1000000,4000000", help="comma-separated row counts of the memory benchmark")
    p.add_argument("--mem-classes", type=int, default=100)
    p.add_argument("--mem-features", type=int, default=16)
    p.add_argument("--mem-window-mb", type=float, default=None, help="shuffle window of the memory benchmark (default: the reader's default)")
    p.add_argument("--shard-rows", type=int, default=131_072)
    p.add_argument("--row-group-rows", type=int, default=32_768)
    p.add_argument("--workdir", type=Path, default=None, help="where to write the data (default: a temporary directory, removed after)")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--_memory-child", dest="memory_child", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.epochs, args.mem_rows = 6_000, 2, "100000,400000"
        args.mem_window_mb = args.mem_window_mb or 16  # several windows even at the small sizes
    return args


# -- data ---------------------------------------------------------------------


def load_mnist(rows: int, synthetic: bool) -> tuple[np.ndarray, np.ndarray, str]:
    """uint8 [rows, 784] pixels and int64 labels."""
    images, labels = MNIST / "train-images-idx3-ubyte.gz", MNIST / "train-labels-idx1-ubyte.gz"
    if synthetic or not images.exists():
        rng = np.random.default_rng(0)
        return rng.integers(0, 256, (rows, 784), dtype=np.uint8), rng.integers(0, 10, rows), "synthetic pixels"
    with gzip.open(images) as f:
        raw = f.read()
    n = int.from_bytes(raw[4:8], "big")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(n, 784)
    with gzip.open(labels) as f:
        y = np.frombuffer(f.read(), dtype=np.uint8, offset=8).astype(np.int64)
    reps = -(-rows // n)
    return np.tile(pixels, (reps, 1))[:rows], np.tile(y, reps)[:rows], "MNIST train"


def write_transfer_set(directory: Path, inputs: np.ndarray, labels: np.ndarray, logits_fn, num_classes: int,
                       input_spec, shard_rows: int, row_group_rows: int, temperature: float = 2.0) -> None:
    """Shards as the generator writes them; `logits_fn(first, last)` gives float32 logits of those rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from transferset.format import schema
    from transferset.format.manifest import ShardRecord, shard_name, write_manifest
    from transferset.format.provenance import Provenance
    from transferset.io import file_sha256

    directory.mkdir(parents=True, exist_ok=True)
    features = inputs.shape[1]
    value_type = pa.from_numpy_dtype(inputs.dtype)
    input_field = pa.field("x", pa.list_(pa.field("element", value_type, nullable=False), features), nullable=False)
    provenance = Provenance(
        target_kind="dense", num_classes=num_classes, temperature=temperature, combine="arithmetic", storage_dtype="float16",
        teachers=[{"name": "bench-random-linear"}], sources=[{"path": "bench"}], input=input_spec.to_dict(),
    )
    target = schema.target_schema(provenance, [input_field])
    options = schema.parquet_options(target, provenance)
    records, n = [], len(labels)
    for index, shard_first in enumerate(range(0, n, shard_rows)):
        path = directory / shard_name(index)
        shard_last = min(shard_first + shard_rows, n)
        with pq.ParquetWriter(path, target, **options) as writer:
            for first in range(shard_first, shard_last, row_group_rows):
                last = min(first + row_group_rows, shard_last)
                logits = logits_fn(first, last)
                logits = (logits - logits.max(axis=1, keepdims=True)).astype(np.float16)
                table = pa.table({
                    schema.ID: pa.array([f"r{i}" for i in range(first, last)]),
                    schema.SOURCE: pa.array(["bench"] * (last - first)),
                    schema.LABEL: pa.array(labels[first:last], type=pa.int32()),
                    schema.LOGITS: pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), num_classes),
                    "x": pa.FixedSizeListArray.from_arrays(pa.array(inputs[first:last].reshape(-1)), features),
                }, schema=target)
                writer.write_table(table, row_group_size=last - first)
        records.append(ShardRecord(path.name, index, shard_last - shard_first, shard_last - shard_first, path.stat().st_size, file_sha256(path)))
    write_manifest(directory, provenance, records)


# -- 1. streaming overhead ------------------------------------------------------


def bench_training(args, workdir: Path) -> dict:
    import torch
    import torch.nn.functional as F

    from train.stream import StreamSource
    from transferset.inputs import InputSpec

    if args.threads:
        torch.set_num_threads(args.threads)
    pixels, labels, what = load_mnist(args.rows, args.synthetic)
    teacher = np.random.default_rng(1).standard_normal((784, 10)).astype(np.float32) * 0.05
    spec = InputSpec(columns=("x",), shape=(784,), scale=1 / 255)
    directory = workdir / "train-set"
    write_transfer_set(directory, pixels, labels, lambda a, b: (pixels[a:b] / np.float32(255)) @ teacher * 10, 10, spec,
                       args.shard_rows, args.row_group_rows)
    source = StreamSource.open_transfer_set(directory)  # the whole set fits one window: read once, kept
    reread = StreamSource.open_transfer_set(directory, window_bytes=1)  # one row group per window: read every epoch
    temperature = source.temperature

    # The same tensors in memory: what the stream yields, decoded once up front.
    x_mem = spec.to_tensor(_table_of(directory, ["x"]))
    t_mem = torch.from_numpy(np.stack(_table_of(directory, ["logits"]).column(0).to_numpy(zero_copy_only=False)).astype(np.float32))

    def make():
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(784, 800), torch.nn.ReLU(), torch.nn.Linear(800, 800), torch.nn.ReLU(), torch.nn.Linear(800, 10))
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(model, opt, x, t):
        student = F.log_softmax(model(x) / temperature, dim=1)
        loss = F.kl_div(student, F.log_softmax(t / temperature, dim=1), log_target=True, reduction="batchmean") * temperature**2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def memory_epoch(model, opt, epoch):
        order = torch.from_numpy(np.random.default_rng(epoch).permutation(len(x_mem)))
        for first in range(0, len(order), args.batch_size):
            idx = order[first : first + args.batch_size]
            step(model, opt, x_mem[idx], t_mem[idx])

    def stream_epoch(src, model, opt, epoch):
        for batch in src.epoch(batch_size=args.batch_size, seed=0, epoch=epoch):
            step(model, opt, batch.inputs, batch.target_logits)

    def read_only_epoch(src, epoch):
        for _ in src.epoch(batch_size=args.batch_size, seed=0, epoch=epoch):
            pass

    mem_model, kept_model, reread_model = make(), make(), make()
    memory_epoch(*mem_model, 0)  # warm-up: allocator, kernels, page cache
    stream_epoch(source, *kept_model, 0)
    stream_epoch(reread, *reread_model, 0)
    times = {key: [] for key in ("memory", "kept", "reread", "read_kept", "read_reread")}
    cpu = {key: [] for key in times}  # CPU seconds of all threads: the work, whatever else runs on the machine
    for epoch in range(1, args.epochs + 1):  # interleaved, so drifts of a noisy machine hit all modes
        for key, fn, fn_args in (("memory", memory_epoch, mem_model), ("kept", stream_epoch, (source, *kept_model)),
                                 ("reread", stream_epoch, (reread, *reread_model)), ("read_kept", read_only_epoch, (source,)),
                                 ("read_reread", read_only_epoch, (reread,))):
            wall, used = _timed(fn, *fn_args, epoch)
            times[key].append(wall)
            cpu[key].append(used)
    ratios = {mode: [s / m for s, m in zip(times[mode], times["memory"])] for mode in ("kept", "reread")}
    cpu_ratios = {mode: statistics.median(cpu[mode]) / statistics.median(cpu["memory"]) for mode in ("kept", "reread")}
    return {"data": what, "rows": args.rows, "batches": source.num_batches(args.batch_size), "times": times, "ratios": ratios,
            "cpu_ratios": cpu_ratios, "threads": torch.get_num_threads(), "windows": (1, -(-len(reread._row_groups) // reread.window_row_groups))}


def _table_of(directory: Path, columns: list[str]):
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.read_table(p, columns=columns) for p in sorted(directory.glob("part-*.parquet"))]).combine_chunks()


def _timed(fn, *a) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of fn(*a)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    fn(*a)
    return time.perf_counter() - start, time.process_time() - start_cpu


# -- 2. memory ------------------------------------------------------------------


def bench_memory(args, workdir: Path) -> list[dict]:
    from transferset.inputs import InputSpec

    results = []
    for rows in [int(r) for r in args.mem_rows.split(",")]:
        directory = workdir / f"mem-{rows}"
        rng = np.random.default_rng(rows)
        features = rng.standard_normal((rows, args.mem_features), dtype=np.float32)
        labels = rng.integers(0, args.mem_classes, rows)
        start = time.perf_counter()
        write_transfer_set(directory, features, labels,
                           lambda a, b: np.random.default_rng(a).standard_normal((b - a, args.mem_classes), dtype=np.float32) * 3,
                           args.mem_classes, InputSpec(columns=("x",), shape=(args.mem_features,)), args.shard_rows, args.row_group_rows)
        write_s = time.perf_counter() - start
        del features, labels
        size_mb = sum(p.stat().st_size for p in directory.glob("part-*.parquet")) / 2**20
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, __file__, "--_memory-child", str(directory), "--batch-size", str(args.batch_size)]
        if args.mem_window_mb:
            command += ["--mem-window-mb", str(args.mem_window_mb)]
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise SystemExit(f"memory child failed:\n{proc.stderr}")
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        result.update(rows=rows, file_mb=size_mb, write_s=write_s)
        results.append(result)
        shutil.rmtree(directory)
    return results


def peak_rss_mb() -> float:
    """This process's peak RSS. Linux's VmHWM belongs to the current address space;
    ru_maxrss survives exec, so a child started from this (large) benchmark process
    would report the parent's size. ru_maxrss only where /proc is missing."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def memory_child(directory: Path, batch_size: int, window_mb: float | None) -> None:
    """One streamed epoch in a fresh process (a peak RSS never goes down)."""
    import torch  # noqa: F401  (counted in the baseline, as in training)

    from train.stream import StreamSource

    before = peak_rss_mb()
    source = StreamSource.open_transfer_set(directory, **({"window_bytes": int(window_mb * 2**20)} if window_mb else {}))
    start, rows = time.perf_counter(), 0
    for batch in source.epoch(batch_size=batch_size, seed=0, epoch=0):
        rows += len(batch)
    seconds = time.perf_counter() - start
    assert rows == source.num_rows
    windows = -(-len(source._row_groups) // source.window_row_groups)
    print(json.dumps({"baseline_mb": before, "peak_mb": peak_rss_mb(), "epoch_s": seconds, "rows_per_s": rows / seconds, "windows": windows}))


# -- report ---------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.batch_size, args.mem_window_mb)
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        train = None if args.skip_train else bench_training(args, workdir)
        load_before = os.getloadavg()[0]
        memory = [] if args.skip_memory else bench_memory(args, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nbench_stream{' --quick' if args.quick else ''}: batch {args.batch_size}, {os.cpu_count()} CPUs, "
          f"load average {load_before:.1f} before the memory part / {os.getloadavg()[0]:.1f} at the end (other processes skew wall times)")
    if train:
        t, r = train["times"], train["ratios"]
        print(f"\n1. streaming overhead, MLP 784-800-800-10 on {train['rows']:,} rows ({train['data']}, {train['batches']} batches/epoch, "
              f"{train['threads']} torch threads)")
        print("   kept: the set fits the default window, read once; re-read: one row group per window "
              f"({train['windows'][1]} windows), read every epoch with read-ahead")
        print(f"   {'epoch':>5} {'in memory s':>12} {'kept s':>7} {'ratio':>6} {'re-read s':>10} {'ratio':>6} {'stream only s (kept/re-read)':>29}")
        for i in range(len(t["memory"])):
            print(f"   {i + 1:>5} {t['memory'][i]:>12.3f} {t['kept'][i]:>7.3f} {r['kept'][i]:>6.3f} {t['reread'][i]:>10.3f} {r['reread'][i]:>6.3f} "
                  f"{t['read_kept'][i]:>14.3f} / {t['read_reread'][i]:.3f}")
        for mode, label in (("kept", "kept"), ("reread", "re-read")):
            ratio = statistics.median(r[mode])
            print(f"   median ratio streamed ({label}) / in memory: {ratio:.3f} (target <= 1.05: {'ok' if ratio <= 1.05 else 'OVER TARGET'}); "
                  f"CPU-time ratio {train['cpu_ratios'][mode]:.3f}; stream alone {train['rows'] / statistics.median(t['read_' + mode]):,.0f} rows/s")
    if memory:
        print(f"\n2. memory of one streamed epoch (C={args.mem_classes} float16 logits, {args.mem_features} float32 features, "
              f"no training; peak RSS = VmHWM of a fresh process, baseline = after imports)")
        print(f"   {'rows':>10} {'file MB':>8} {'windows':>8} {'baseline MB':>12} {'peak MB':>8} {'growth MB':>10} {'epoch s':>8} {'rows/s':>10}")
        for m in memory:
            print(f"   {m['rows']:>10,} {m['file_mb']:>8.0f} {m['windows']:>8} {m['baseline_mb']:>12.0f} {m['peak_mb']:>8.0f} "
                  f"{m['peak_mb'] - m['baseline_mb']:>10.0f} {m['epoch_s']:>8.2f} {m['rows_per_s']:>10,.0f}")
        if len(memory) >= 2:
            first, last = memory[0], memory[-1]
            peak = last["peak_mb"] / first["peak_mb"]
            growth = (last["peak_mb"] - last["baseline_mb"]) / max(first["peak_mb"] - first["baseline_mb"], 1e-9)
            verdict = "ok" if peak <= 1.10 else "OVER TARGET"
            print(f"   peak RSS {last['rows']:,} / {first['rows']:,} rows: {peak:.3f} (target <= 1.10: {verdict}); "
                  f"growth above the post-import baseline: {growth:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
