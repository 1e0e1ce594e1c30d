"""What several benchmarks share: MNIST's location, a median of timed runs, an MNIST source."""

from __future__ import annotations

import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
PIXELS = ["--input-column", "pixels", "--input-shape", "1,28,28", "--input-scale", "1/255"]  # generate's flags for it


def median_time(fn, repeat: int) -> float:
    """Median wall time of `repeat` calls of fn()."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def mnist_source(work: Path, rows: int) -> Path:
    """`transferset convert` of MNIST's first `rows` training images, in this process; past
    60,000 the images are tiled (each copy's `row` renumbered), as bench_vs_hf.py does."""
    import cli

    source = work / "mnist-train.parquet"
    code = cli.main(["convert", "--images", str(MNIST / "train-images-idx3-ubyte.gz"), "--labels",
                     str(MNIST / "train-labels-idx1-ubyte.gz"), "--rows", f"0:{min(rows, 60000)}", "--out", str(source), "--quiet"])
    assert code == 0, "convert of MNIST failed"
    if rows > 60000:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pq.read_table(source)
        tiled = pa.concat_tables([table] * -(-rows // table.num_rows)).slice(0, rows)
        tiled = tiled.set_column(tiled.schema.get_field_index("row"), "row", pa.array(range(rows), pa.int64()))
        pq.write_table(tiled.cast(table.schema), source, row_group_size=32768, compression="zstd")
    return source
