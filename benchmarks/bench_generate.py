"""How close `transferset generate` comes to running the teachers alone.

    python benchmarks/bench_generate.py [--rows 60000] [--repeat 3]

1. Teacher-bound: an ensemble of 3 MLP teachers (784-1200-1200-10) over the
   MNIST training images. Wall time of `transferset generate` (in-process
   `cli.main`, so teacher loading, source hashing, combining, Parquet encoding
   and the manifest all count) / a bare loop that only runs the same teachers
   over the same images already in memory as one float32 tensor. Target <= 1.10.
2. Write path: the same command with a trivial teacher (rows/s), against
   pyarrow writing the same arrays (ids, labels, float16 logits, pixels) with
   the same Parquet options straight from memory.

Medians of --repeat runs, measured side by side in one process; the machine is
shared and noisy, so read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import bench_models  # noqa: E402
import cli  # noqa: E402
from bench_common import median_time, mnist_source  # noqa: E402
from transferset.format.schema import parquet_options, provenance_of  # noqa: E402



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1024)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-generate-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work)


def run(args, work: Path) -> None:
    source = mnist_source(work, args.rows)
    table = pq.read_table(source)
    n = table.num_rows
    pixels = table["pixels"].combine_chunks().flatten().to_numpy().reshape(n, 784)
    print(f"torch threads: {torch.get_num_threads()}, rows: {n:,}, batch size: {args.batch_size}")

    # -- 1. teacher-bound: generate vs a bare in-memory loop ----------------------------
    teachers = [bench_models.mlp1200_a().eval(), bench_models.mlp1200_b().eval(), bench_models.mlp1200_c().eval()]
    x_all = torch.from_numpy(pixels.astype(np.float32) / 255).view(n, 1, 28, 28)

    def bare():
        with torch.inference_mode():
            for i in range(0, n, args.batch_size):
                x = x_all[i:i + args.batch_size]
                for t in teachers:
                    t(x)

    common = ["--source", str(source), "--input-column", "pixels", "--input-shape", "1,28,28", "--input-scale", "1/255",
              "--batch-size", str(args.batch_size), "--combine", "geometric", "-T", "4", "--quiet"]

    def generate(teacher_names, out):
        def go():
            shutil.rmtree(out, ignore_errors=True)
            code = cli.main(["generate", *[a for t in teacher_names for a in ("--teacher", f"bench_models:{t}")], *common, "--out", str(out)])
            assert code == 0
        return go

    bare()  # warm-up: first-touch of weights and allocator
    t_bare = median_time(bare, args.repeat)
    t_gen = median_time(generate(["mlp1200_a", "mlp1200_b", "mlp1200_c"], work / "ts"), args.repeat)
    print(f"\n1. teacher-bound, 3 x MLP 784-1200-1200-10 over {n:,} rows")
    print(f"   bare teacher loop (in memory): {t_bare:7.2f} s  {n / t_bare:10,.0f} rows/s")
    print(f"   transferset generate:          {t_gen:7.2f} s  {n / t_gen:10,.0f} rows/s")
    print(f"   ratio generate / bare:         {t_gen / t_bare:7.3f}   (target <= 1.10)")

    # -- 2. write path: trivial teacher vs pyarrow writing the same arrays ---------------
    t_write = median_time(generate(["trivial"], work / "ts-trivial"), args.repeat)
    written = pq.read_table(sorted((work / "ts-trivial").glob("part-*.parquet")))  # the shards, not the card beside them
    ids, labels, logits = written["id"], written["label"], written["logits"]
    schema = written.schema

    def pyarrow_direct():
        out = work / "direct.parquet"
        direct = pa.table([ids, pa.array([str(source)] * n), labels, logits, table["pixels"]], schema=schema)
        pq.write_table(direct, out, row_group_size=32768, **parquet_options(schema, provenance_of(schema, "bench")))

    t_direct = median_time(pyarrow_direct, args.repeat)
    on_disk = sum(p.stat().st_size for p in (work / "ts-trivial").glob("*.parquet"))
    print(f"\n2. write path, trivial teacher, {n:,} rows ({on_disk / n:.0f} B/row on disk)")
    print(f"   transferset generate:          {t_write:7.2f} s  {n / t_write:10,.0f} rows/s")
    print(f"   pyarrow write_table directly:  {t_direct:7.2f} s  {n / t_direct:10,.0f} rows/s")
    print(f"   ratio generate / pyarrow:      {t_write / t_direct:7.2f}   (includes reading the source, ids, hashing, manifest)")


if __name__ == "__main__":
    main()
