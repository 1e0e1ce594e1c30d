"""What page checksums and the float16 encoding cost: bytes, write time, read time.

    python benchmarks/bench_integrity.py [--rows 60000] [--repeats 3]

Two small MNIST teachers (bench_storage.py's) label the MNIST training images; their
geometric mean at T = 4 is written as a shard would be (id, source, label, logits,
the 784 pixels; zstd-1, row groups of 8,192) under each option compared:

* float16 logits BYTE_STREAM_SPLIT (before) vs PLAIN (now, readable by DuckDB);
* with and without `write_page_checksum` (now: with), read with and without
  `page_checksum_verification` (what the trainer reads with);
* what `inspect` adds before its polars query: the shards' SHA-256 (vs a polars read).

Each time is the median CPU time of `--repeats` runs (reads single-threaded). Figures in docs/benchmarks.md and
docs/format.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_storage import idx, teacher  # noqa: E402
from transferset.combine import combine, normalised_weights  # noqa: E402
from transferset.format.codecs.dense import fixed_floats  # noqa: E402
from transferset.format.provenance import Provenance  # noqa: E402
from transferset.format.schema import parquet_options  # noqa: E402
from transferset.io import file_sha256  # noqa: E402


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.process_time()  # CPU seconds (all threads): steadier than wall time on a shared machine
        fn()
        times.append(time.process_time() - start)
    return statistics.median(times)


def interleaved(first, second, repeats: int) -> tuple[float, float]:
    """Medians of two readers timed alternately (after one warm-up each), so that a
    change in the machine's load hits both alike."""
    first(), second()
    a, b = [], []
    for _ in range(repeats):
        a.append(median_time(first, 1))
        b.append(median_time(second, 1))
    return statistics.median(a), statistics.median(b)


def table_of(logits: np.ndarray, pixels: np.ndarray, labels: np.ndarray, dtype: str) -> pa.Table:
    n = len(logits)
    return pa.table({
        "id": pa.array([f"0123456789abcdef:{i}" for i in range(n)]),
        "source": pa.array(["mnist-train.parquet"] * n),
        "label": pa.array(labels, pa.int32()),
        "logits": fixed_floats(logits, dtype),
        "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), pixels.shape[1]),
    })


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    images = idx("train-images-idx3-ubyte.gz")[:args.rows]
    labels = idx("train-labels-idx1-ubyte.gz")[:args.rows].astype(np.int32)
    x = torch.from_numpy(images.astype(np.float32) / 255)
    y = torch.from_numpy(labels.astype(np.int64))
    nets = [teacher(s, x[:20000], y[:20000]) for s in (1, 2)]
    with torch.inference_mode():
        members = torch.stack([n(x) for n in nets])
    logits = combine(members, "geometric", 4.0, normalised_weights(None, 2)).numpy()
    pixels = images.reshape(len(images), -1)
    print(f"{args.rows:,} rows, 10 classes, median of {args.repeats}")
    print(f"{'dtype':8} {'encoding':17} {'crc':4} {'file B/row':>10} {'logits B/row':>12} {'write s':>8} {'read s':>7} {'read+verify s':>13} {'sha256 s':>8} {'polars s':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for dtype, encoding in (("float16", "BYTE_STREAM_SPLIT"), ("float16", "PLAIN"), ("float32", "BYTE_STREAM_SPLIT")):
            table = table_of(logits, pixels, labels, dtype)
            provenance = Provenance(target_kind="dense", num_classes=10, temperature=4.0, combine="geometric",
                                    storage_dtype=dtype, teachers=[{}], sources=[{}], input={})
            for crc in (False, True):
                options = parquet_options(table.schema, provenance)
                options["column_encoding"] = {leaf: encoding if leaf.startswith("logits") else e  # the pixels keep theirs
                                              for leaf, e in options["column_encoding"].items()}
                options["write_page_checksum"] = crc
                path = Path(tmp) / f"{dtype}-{encoding}-{crc}.parquet"
                write = median_time(lambda: pq.write_table(table, path, row_group_size=8192, **options), args.repeats)
                read, verified = interleaved(lambda: pq.ParquetFile(path).read(use_threads=False),
                                             lambda: pq.ParquetFile(path, page_checksum_verification=True).read(use_threads=False),
                                             args.repeats)
                sha = median_time(lambda: file_sha256(path), args.repeats)
                polars = median_time(lambda: pl.read_parquet(path), args.repeats)
                meta = pq.ParquetFile(path).metadata
                logit_bytes = sum(meta.row_group(g).column(c).total_compressed_size for g in range(meta.num_row_groups)
                                  for c in range(meta.num_columns) if meta.row_group(g).column(c).path_in_schema.startswith("logits"))
                print(f"{dtype:8} {encoding:17} {'yes' if crc else 'no':4} {path.stat().st_size / args.rows:10.2f} "
                      f"{logit_bytes / args.rows:12.2f} {write:8.3f} {read:7.3f} {verified:13.3f} {sha:8.3f} {polars:8.3f}")


if __name__ == "__main__":
    main()
