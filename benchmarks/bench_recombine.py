"""`transferset recombine` against `generate` with the same members, and against a copy.

    python benchmarks/bench_recombine.py [--rows 20000] [--repeat 3]

A source set of the MNIST training images with 3 MLP teachers (784-1200-1200-10)
and their kept logits (float16, geometric, T = 4) is made once. Then, side by side
in one process (in-process `cli.main`, so everything a user waits for counts):

1. `transferset generate` with teachers 0 and 2, arithmetic, T = 8 (what the
   recombined set equals, up to float16 rounding of the members);
2. `transferset recombine SOURCE --members 0,2 --combine arithmetic -T 8`;
3. the I/O floor: pyarrow reading every source shard and writing it again with the
   same Parquet options (no checks, no combine, no manifest).

recombine / generate is the speed-up of not running teachers; recombine / copy says
how close recombine comes to being I/O-bound. Medians of --repeat runs; the machine
is shared and noisy, so read ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import cli  # noqa: E402
from bench_common import PIXELS, median_time, mnist_source  # noqa: E402
from transferset.format.manifest import read_manifest  # noqa: E402
from transferset.format.schema import parquet_options, provenance_of  # noqa: E402



def run_cli(*argv) -> None:
    code = cli.main([str(a) for a in argv] + ["--quiet"])
    assert code == 0, argv


def fresh(out: Path, *argv):
    def go():
        shutil.rmtree(out, ignore_errors=True)
        run_cli(*argv, "--out", out)
    return go


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-recombine-"))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work)


def run(args, work: Path) -> None:
    source = mnist_source(work, args.rows)
    common = ["--source", source, *PIXELS]
    members = ["--teacher", "bench_models:mlp1200_a", "--teacher", "bench_models:mlp1200_b", "--teacher", "bench_models:mlp1200_c"]
    kept = work / "kept"
    run_cli("generate", *members, *common, "--keep-teacher-logits", "-T", "4", "--out", kept)
    n = read_manifest(kept).rows
    print(f"torch threads: {torch.get_num_threads()}, rows: {n:,}, source set: 3 x MLP 784-1200-1200-10, float16, members kept")

    generate = fresh(work / "generated", "generate", "--teacher", "bench_models:mlp1200_a", "--teacher", "bench_models:mlp1200_c",
                     *common, "--keep-teacher-logits", "--combine", "arithmetic", "-T", "8")
    recombine = fresh(work / "recombined", "recombine", kept, "--members", "0,2", "--combine", "arithmetic", "-T", "8")

    def copy():
        out = work / "copy"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        for path in read_manifest(kept).shard_paths():
            table = pq.read_table(path)
            pq.write_table(table, out / path.name, row_group_size=32768,
                           **parquet_options(table.schema, provenance_of(table.schema, str(path))))

    t_generate = median_time(generate, args.repeat)
    t_recombine = median_time(recombine, args.repeat)
    t_copy = median_time(copy, args.repeat)
    print(f"\nmembers 0 and 2, arithmetic, T = 8, over {n:,} rows (median of {args.repeat})")
    print(f"   transferset generate (2 teachers):  {t_generate:7.2f} s  {n / t_generate:10,.0f} rows/s")
    print(f"   transferset recombine:              {t_recombine:7.2f} s  {n / t_recombine:10,.0f} rows/s")
    print(f"   pyarrow read + write (I/O floor):   {t_copy:7.2f} s  {n / t_copy:10,.0f} rows/s")
    print(f"   ratio recombine / generate rows/s:  {t_generate / t_recombine:7.1f}x")
    print(f"   ratio recombine / I/O floor rows/s: {t_copy / t_recombine:7.2f}")


if __name__ == "__main__":
    main()
