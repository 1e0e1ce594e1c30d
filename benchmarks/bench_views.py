"""What stored views cost: bytes per view, generate's overhead, training's overhead.

    python benchmarks/bench_views.py            # ~1-2 min on 2 cores
    python benchmarks/bench_views.py --quick    # a smoke run

1. Bytes per view on disk (the views columns' compressed Parquet column chunks, the
   generator's encoding options) for synthetic teacher-like targets (one class
   ~N(8, 2) above the others' N(0, 2), T = 1) and the params `ViewPlan` draws:
   dense C=10 with shift(2) (the MNIST case), and top-10 of C=1000 with
   random-resized-crop(224),hflip (ImageNet-like; goal <= 40 B/view).
2. Generate: images/s of `transferset generate --views` (in-process: augmentation,
   teachers, combine, encode, write) / a bare loop running the same teacher over the
   same augmented batches already in memory. Target >= 0.9.
3. Train: images/s of a student trained from the views set through StreamSource
   (per batch: the view choice and its exact replay; inputs decoded once per window)
   / the same student fed the same augmented inputs and targets from memory. Target >= 0.8.

Random 3x32x32 uint8 inputs (the timings do not depend on the content); a
ResNet-18 teacher (width 16) and a small CNN student; one torch thread each.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(ROOT), str(HERE)]

import cli  # noqa: E402
from train.resnet import resnet18  # noqa: E402
from train.students import cnn  # noqa: E402
from transferset.format.codecs import get_codec  # noqa: E402
from transferset.format.provenance import Provenance  # noqa: E402
from transferset.format.schema import parquet_options  # noqa: E402
from transferset.views.expand import ViewPlan  # noqa: E402

SHAPE = (3, 32, 32)


def teacher() -> torch.nn.Module:
    """The benchmark's teacher (named `bench_views:teacher` on the command line)."""
    torch.manual_seed(0)
    return resnet18(10, SHAPE, width=16)


# -- 1. bytes per view ----------------------------------------------------------------


def bytes_per_view(classes: int, k: int | None, augment: str, shape: tuple, rows: int, views: int, work: Path) -> tuple[float, float]:
    """(on-disk, uncompressed) bytes per view of the views columns."""
    options = {"views": views, "augment": augment, "seed": 0, **({"k": k} if k else {})}
    prov = Provenance(target_kind="views", num_classes=classes, temperature=1.0, combine="geometric", storage_dtype="float16",
                      teachers=[{"name": "t"}], sources=[{"path": "s"}], input={"columns": ["x"], "shape": list(shape)},
                      target_options=options, row_group_rows=32768)
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (rows, views, classes)).astype(np.float32)
    logits[np.arange(rows), :, rng.integers(0, classes, rows)] += rng.normal(8, 2, (rows, views)).astype(np.float32)
    params = ViewPlan.from_options(options).params([f"row:{i}" for i in range(rows)], shape)
    codec = get_codec("views")
    columns = codec.encode(torch.from_numpy(logits), None, prov, params=params)
    fields = codec.arrow_fields(prov)
    schema = pa.schema(fields)
    path = work / f"views-{classes}.parquet"
    with pq.ParquetWriter(path, schema, **parquet_options(schema, prov)) as writer:
        writer.write_table(pa.table({f.name: columns[f.name] for f in fields}, schema=schema), row_group_size=32768)
    meta = pq.ParquetFile(path).metadata
    chunks = [meta.row_group(g).column(c) for g in range(meta.num_row_groups) for c in range(meta.num_columns)]
    on_disk = sum(c.total_compressed_size for c in chunks)
    raw = sum(c.total_uncompressed_size for c in chunks)
    return on_disk / (rows * views), raw / (rows * views)


# -- 2. generate vs the bare teacher ---------------------------------------------------


def generate_ratio(source: Path, work: Path, views: int, augment: str, batch: int, repeat: int) -> tuple[float, float]:
    table = pq.read_table(source)
    n = table.num_rows
    x = torch.from_numpy(table["pixels"].combine_chunks().flatten().to_numpy().reshape(n, *SHAPE).astype(np.float32) / 255)
    ids = [f"{i}" for i in range(n)]
    plan = ViewPlan(views, ViewPlan.from_options({"views": views, "augment": augment}).augmentation, 0)
    batches = [plan.expand({"x": x[i:i + batch]}, ids[i:i + batch])[0]["x"] for i in range(0, n, batch)]
    model = teacher().eval()

    def bare():
        with torch.inference_mode():
            for b in batches:
                torch.log_softmax(model(b), dim=-1)

    def generate():
        out = work / "set"
        shutil.rmtree(out, ignore_errors=True)
        code = cli.main(["generate", "--teacher", "bench_views:teacher", "--source", str(source), "--input-shape", "3,32,32",
                         "--input-scale", "1/255", "--views", str(views), "--augment", augment, "--batch-size", str(batch),
                         "--out", str(out), "--quiet"])
        assert code == 0

    pairs = [(_time(bare), _time(generate)) for _ in range(repeat)]  # alternated: the machine's load hits both alike
    t_bare, t_gen = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return n * views / t_gen, n * views / t_bare


# -- 3. training from views vs from memory -------------------------------------------


def train_ratio(out: Path, batch: int, epochs: int) -> tuple[float, float]:
    from train.stream import StreamSource

    source = StreamSource.open_transfer_set(out)
    student = cnn(10, SHAPE)
    optimiser = torch.optim.SGD(student.parameters(), lr=0.01)

    def step(inputs, targets):
        loss = torch.nn.functional.kl_div(torch.log_softmax(student(inputs), -1), torch.log_softmax(targets, -1),
                                          log_target=True, reduction="batchmean")
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    # The in-memory run gets the same augmented inputs and targets as one epoch from views, precomputed.
    memory = [(b.inputs, b.target_logits) for b in source.epoch(batch_size=batch, seed=0, epoch=0)]
    x = torch.cat([m[0] for m in memory])
    t = torch.cat([m[1] for m in memory])
    n = len(x)

    def from_views(epoch):
        for b in source.epoch(batch_size=batch, seed=0, epoch=epoch):
            step(b.inputs, b.target_logits)

    def from_memory(epoch):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(batch):
            step(x.index_select(0, idx), t.index_select(0, idx))

    views_times, memory_times = [], []
    for e in range(1, epochs + 1):  # alternated, as above
        views_times.append(_time(lambda: from_views(e)))
        memory_times.append(_time(lambda: from_memory(e)))
    return n / statistics.median(views_times), n / statistics.median(memory_times)


def _time(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=1024, help="rows of the generate and train benchmarks")
    parser.add_argument("--views", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = 256 if args.quick else args.rows
    work = Path(tempfile.mkdtemp(prefix="bench-views-"))
    try:
        print("1. bytes per view (float16 log-probs, int16 ids and params, zstd-1 as generate writes them)")
        for label, c, k, augment, shape in (("dense C=10, shift(2)", 10, None, "shift(2)", (1, 28, 28)),
                                            ("top-10 of C=1000, random-resized-crop(224),hflip", 1000, 10,
                                             "random-resized-crop(224),hflip", (3, 224, 224))):
            disk, raw = bytes_per_view(c, k, augment, shape, 512 if args.quick else 4096, 16, work)
            print(f"   {label}: {disk:.1f} B/view on disk ({raw:.1f} uncompressed)")
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, (rows, int(np.prod(SHAPE))), dtype=np.uint8)
        np.save(work / "x.npy", pixels)
        source = work / "x.parquet"
        assert cli.main(["convert", "--images", str(work / "x.npy"), "--out", str(source), "--quiet"]) == 0
        augment = "random-resized-crop(32,scale=0.35-1),hflip"
        gen, bare = generate_ratio(source, work, args.views, augment, 256, 1 if args.quick else args.repeat)
        print(f"2. generate --views {args.views}: {gen:,.0f} views/s vs bare teacher {bare:,.0f} views/s: ratio {gen / bare:.2f} (target >= 0.9)")
        from_views, from_memory = train_ratio(work / "set", 128, 1 if args.quick else 3)
        print(f"3. train from views: {from_views:,.0f} images/s vs from memory {from_memory:,.0f} images/s: "
              f"ratio {from_views / from_memory:.2f} (target >= 0.8)")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
