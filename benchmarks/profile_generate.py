"""Where `transferset generate` spends its time, per row: each step timed alone.

    python benchmarks/profile_generate.py [--rows 60000] [--threads 1] [--device cpu] [--waits]   (~1 min on 2 cores)

Runs the steps `LocalEngine` overlaps (transferset/generate/engines.py, shard.py) one
after the other in this process, on the same data and teachers as
`benchmarks/bench_vs_hf.py` (MNIST training images via `transferset convert`; 3 x MLP
784-1200-1200-10 as `.pt2`, geometric, T = 4, float16, batch 1024), and prints the
seconds and microseconds per row of each:

    start-up    hash the source, load and hash the teachers, probe, count labels (`prepare`)
    per row     read + decode the Parquet rows; uint8 -> float32 tensor; host -> device;
                teachers; NaN check + combine; encode the targets (float16 columns);
                id / source / label columns; the passed-through input column; Parquet
                encode + compress (the whole shard, then once more uncompressed to split
                the two, and each column alone); fsync; SHA-256 of the shard

Timed steps run with `--threads` torch threads (default 1, the steadiest on a shared
machine); in a real run the reader and writer run on their own threads beside the
teachers (on 2 cores they take CPU from them, so this sum is what overlap can hide at
best). Nothing outside a temporary directory is written.

Then, with `--waits`, one real run (`transferset generate` in this process, the
LocalEngine's reader, teachers and writer threads overlapping) with the teachers' thread
instrumented: its wall and CPU seconds in `label_batch` (teachers, combine, encode), and
the seconds it waited for the reader's next batch and for the writer's queue. Waits are
time the teachers could have been running.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--teacher-width", type=int, default=1200)
    parser.add_argument("--waits", action="store_true", help="also one real run with the teachers' thread instrumented")
    args = parser.parse_args()
    if args.waits and args.device != "cpu":
        parser.error("--waits times the CPU layout (label_batch on the teachers' thread); on CUDA the engine overlaps "
                     "the teachers with the encoding (engines.overlapped), so drop --waits or use --device cpu")
    with tempfile.TemporaryDirectory(prefix="profile-generate-") as tmp:
        work = Path(tmp)
        subprocess.run([sys.executable, str(HERE / "bench_vs_hf.py"), "--arm", "setup", "--work", str(work), "--sizes", str(args.rows),
                        "--teachers", "3", "--teacher-width", str(args.teacher_width)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        profile(args, work)
        if args.waits:
            waits(args, work)


def profile(args: argparse.Namespace, work: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from bench_vs_hf import source_path, teacher_paths
    from transferset import ownership
    from transferset.combine import combine
    from transferset.format.schema import ID, LABEL, SOURCE, parquet_options
    from transferset.generate import GenerateConfig, prepare
    from transferset.generate.setup import named_inputs
    from transferset.generate.shard import ShardJob, _check_finite, _encode, _ids, _not_finite_rows
    from transferset.inputs import InputSpec
    from transferset.io import file_sha256
    from transferset.sources import plan_shards, read_shard_rows
    from transferset.teachers import TeacherSpec, run_teachers

    torch.set_num_threads(args.threads)
    spent: dict[str, float] = defaultdict(float)

    def timed(step: str, fn):
        started = time.perf_counter()
        result = fn()
        spent[step] += time.perf_counter() - started
        return result

    cfg = GenerateConfig(teachers=[TeacherSpec(str(p)) for p in teacher_paths(work, 3)], sources=[str(source_path(work, args.rows))],
                         input_spec=InputSpec(("pixels",), (1, 28, 28), 1 / 255), out=work / "set", combine="geometric",
                         temperature=4.0, batch_size=args.batch_size, device=args.device, quiet=True)
    with ownership.scope():
        ctx = timed("start-up: hash source, load + hash teachers, probe, labels", lambda: prepare(cfg))
    spec, device, batches = cfg.input_spec, ctx.device, []
    for plan in plan_shards(ctx.sources, cfg.shard_rows):
        job = ShardJob(plan, ctx)
        rows = read_shard_rows(job.source, plan, ["pixels", "label"], cfg.batch_size)
        while (item := timed("read + decode Parquet rows", lambda: next(rows, None))) is not None:
            first, batch = item
            x = timed("uint8 -> float32 tensor", lambda: spec.to_inputs(batch, "source", first))
            x = timed("host -> device", lambda: {k: v.to(device) for k, v in x.items()})
            if device.type == "cuda":
                torch.cuda.synchronize()
            member = timed("teachers", lambda: run_teachers(ctx.teachers, named_inputs(cfg, x), cfg.precision))
            target = timed("NaN check + combine", lambda: (_check_finite(_not_finite_rows(member), job, first, ctx.teachers),
                                                            combine(member, cfg.combine, cfg.temperature, ctx.weights))[1])
            targets = timed("encode targets (float16 columns)", lambda: _encode(ctx, target, member, None))
            base = timed("id, source, label columns", lambda: {
                ID: _ids(job, batch, first), SOURCE: pa.array([job.source.path] * batch.num_rows, pa.string()),
                LABEL: batch.column("label").cast(pa.int32())})
            columns = {**base, **targets}
            columns["pixels"] = timed("passed-through input column", lambda: spec.fixed_column(batch.column("pixels"), "source", first))
            batches.append(pa.RecordBatch.from_arrays([columns[f.name] for f in ctx.schema], schema=ctx.schema))
    table = pa.Table.from_batches(batches)
    n = table.num_rows
    options = parquet_options(ctx.schema, ctx.provenance)
    shard = work / "shard.parquet"

    def write(t: pa.Table, **opts) -> None:
        with pq.ParquetWriter(shard, t.schema, **opts) as writer:
            for start in range(0, t.num_rows, cfg.row_group_rows):
                writer.write_table(t.slice(start, cfg.row_group_rows), row_group_size=cfg.row_group_rows)

    timed("Parquet encode + compress, whole shard", lambda: write(table, **options))
    bytes_per_row = os.path.getsize(shard) / n
    timed("fsync", lambda: os.fsync(os.open(shard, os.O_RDONLY)))
    timed("SHA-256 of the shard", lambda: file_sha256(shard))
    plain = {k: v for k, v in options.items() if k != "compression_level"}
    split = {"  of which encoding alone (uncompressed)": lambda: write(table, **{**plain, "compression": "none"})}
    for name in table.column_names:
        split[f"  column {name} alone (compressed)"] = lambda name=name: write(table.select([name]), **_only(options, name))
    for step, fn in split.items():
        timed(step, fn)

    print(f"{n:,} rows, batch {cfg.batch_size}, {args.threads} torch thread(s), device {device}; shard {bytes_per_row:.1f} B/row\n")
    print("| step | s | us/row |")
    print("|---|---|---|")
    for step, seconds in spent.items():
        print(f"| {step} | {seconds:.3f} | {seconds / n * 1e6:.1f} |")
    per_row = sum(s for k, s in spent.items() if not k.startswith(("start-up", "  ")))
    teachers = spent["teachers"]
    print(f"\nper row, all but start-up: {per_row / n * 1e6:.1f} us, of which the teachers {teachers / n * 1e6:.1f} us "
          f"({teachers / per_row:.1%}); everything else is {(per_row - teachers) / teachers:.1%} of the teachers' time")


def waits(args: argparse.Namespace, work: Path) -> None:
    """One `generate` through the CLI in this process, the teachers' thread timed at its three calls."""
    import cli
    import transferset.generate.engines as engines
    from bench_vs_hf import source_path, teacher_paths
    from transferset.writer import ShardWriter

    spent: dict[str, float] = defaultdict(float)
    label_batch, prefetched, write = engines.label_batch, engines.prefetched, ShardWriter.write

    def timed_label_batch(*item):
        wall, cpu = time.perf_counter(), time.thread_time()
        rows = label_batch(*item)
        spent["label_batch (teachers, combine, encode): wall"] += time.perf_counter() - wall
        spent["label_batch: CPU of the teachers' thread"] += time.thread_time() - cpu
        return rows

    def timed_prefetch(make, depth, name):
        inner = prefetched(make, depth, name)
        while True:
            started = time.perf_counter()
            item = next(inner, None)
            spent["waiting for the reader's next batch"] += time.perf_counter() - started
            if item is None:
                return
            yield item

    def timed_write(self, *a):
        started = time.perf_counter()
        write(self, *a)
        spent["waiting for the writer's queue"] += time.perf_counter() - started

    engines.label_batch, engines.prefetched, ShardWriter.write = timed_label_batch, timed_prefetch, timed_write
    teachers = [f for t in teacher_paths(work, 3) for f in ("--teacher", str(t))]
    started = time.perf_counter()
    try:
        code = cli.main(["generate", *teachers, "--source", str(source_path(work, args.rows)), "--input-shape", "1,28,28",
                         "--input-scale", "1/255", "--combine", "geometric", "-T", "4", "--batch-size", str(args.batch_size),
                         "--threads", str(args.threads), "--device", args.device, "--out", str(work / "waits"), "--quiet"])
    finally:
        engines.label_batch, engines.prefetched, ShardWriter.write = label_batch, prefetched, write
    if code:
        raise SystemExit(f"generate exited {code}")
    spent["the whole command"] = time.perf_counter() - started
    print(f"\none real generate, {args.rows:,} rows (the teachers' thread):\n\n| step | s |\n|---|---|")
    for step, seconds in spent.items():
        print(f"| {step} | {seconds:.2f} |")


def _only(options: dict, name: str) -> dict:
    """The shard's Parquet options restricted to one column."""
    keep = {**options}
    keep["use_dictionary"] = [c for c in options["use_dictionary"] if c == name]
    keep["write_statistics"] = [c for c in options["write_statistics"] if c == name]
    keep["column_encoding"] = {leaf: e for leaf, e in options["column_encoding"].items() if leaf.split(".")[0] == name}
    if not keep["column_encoding"]:
        del keep["column_encoding"]
    return keep


if __name__ == "__main__":
    main()
