"""What stored views cost: bytes per view, generate's overhead, training's overhead.

    python benchmarks/bench_views.py            # ~3-4 min on 2 cores
    python benchmarks/bench_views.py --skip-generate   # parts 1 and 3 (part 3 still generates its set once)
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
   (per batch: the view choice and its exact replay; inputs decoded once per window),
   with the replay on the training thread (prefetch 0) and on the producer thread (the
   default), / the same student fed the same augmented inputs and targets from memory.
   Target >= 0.8. Once with the set in one window (decoded once), once in windows of a
   quarter of the rows (re-read and decoded every epoch).

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
from train.students import cnn, mlp  # noqa: E402
from transferset.format.codecs import get_codec  # noqa: E402
from transferset.format.provenance import Provenance  # noqa: E402
from transferset.format.schema import parquet_options  # noqa: E402
from transferset.views.expand import ViewPlan  # noqa: E402

SHAPE = (3, 32, 32)
WAIT_S = 0.01  # --student wait: 10 ms per batch of 128 (12,800 images/s), the CPU left free


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
        generate_set(source, work / "set", views, augment, batch)

    pairs = [(_time(bare), _time(generate)) for _ in range(repeat)]  # alternated: the machine's load hits both alike
    t_bare, t_gen = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
    return n * views / t_gen, n * views / t_bare


def generate_set(source: Path, out: Path, views: int, augment: str, batch: int) -> None:
    shutil.rmtree(out, ignore_errors=True)
    code = cli.main(["generate", "--teacher", "bench_views:teacher", "--source", str(source), "--input-shape", "3,32,32",
                     "--input-scale", "1/255", "--views", str(views), "--augment", augment, "--batch-size", str(batch),
                     "--out", str(out), "--quiet"])
    assert code == 0


# -- 3. training from views vs from memory -------------------------------------------


def train_ratio(out: Path, batch: int, epochs: int, window_rows: int | None, student_name: str = "cnn") -> dict[str, float]:
    """images/s of one student step per batch, fed (a) from the views set with the replay on the
    training thread (prefetch 0, as before the producer thread), (b) with the default prefetch
    (transferset/prefetch.py), (c) from memory; and (d) the views batches alone (no step: the producer's
    ceiling). `window_rows` None: the set is one window, read and decoded once; else windows of
    that many rows, re-read and decoded every epoch (on the read-ahead thread)."""
    from train.stream import StreamSource

    source = StreamSource.open_transfer_set(out, window_rows=window_rows)
    student = cnn(10, SHAPE) if student_name == "cnn" else mlp(10, SHAPE, hidden=(256,))
    optimiser = torch.optim.SGD(student.parameters(), lr=0.01)

    def step(inputs, targets):
        if student_name == "wait":  # a step that waits without the CPU, as one on a GPU does
            time.sleep(WAIT_S)
            return
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

    def from_views(epoch, prefetch):
        for b in source.epoch(batch_size=batch, seed=0, epoch=epoch, prefetch=prefetch):
            step(b.inputs, b.target_logits)

    def batches_alone(epoch):
        for _ in source.epoch(batch_size=batch, seed=0, epoch=epoch, prefetch=0):
            pass

    def from_memory(epoch):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        for idx in order.split(batch):
            step(x.index_select(0, idx), t.index_select(0, idx))

    runs = {"thread": lambda e: from_views(e, 0), "prefetch": lambda e: from_views(e, source.prefetch), "memory": from_memory,
            "alone": batches_alone}
    times = {name: [] for name in runs}
    for e in range(1, epochs + 1):  # alternated, as above
        for name, run in runs.items():
            times[name].append(_time(lambda: run(e)))
    return {name: n / statistics.median(values) for name, values in times.items()}


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
    parser.add_argument("--student", choices=("cnn", "mlp", "wait"), default="cnn",
                        help="part 3's student: the small CNN; an MLP 3072-256-10 whose step is ~15x cheaper (so the replay's share shows); "
                             "or 'wait', a step that sleeps 10 ms per batch, leaving the CPU free as a GPU step does")
    parser.add_argument("--skip-generate", action="store_true", help="skip part 2 (generate's ratio); part 3 still generates its set once")
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
        if args.skip_generate:
            generate_set(source, work / "set", args.views, augment, 256)
        else:
            gen, bare = generate_ratio(source, work, args.views, augment, 256, 1 if args.quick else args.repeat)
            print(f"2. generate --views {args.views}: {gen:,.0f} views/s vs bare teacher {bare:,.0f} views/s: ratio {gen / bare:.2f} (target >= 0.9)")
        print("3. train from views vs from memory (target >= 0.8), images/s:")
        for label, window in (("one window, decoded once", None), ("windows of rows/4, decoded every epoch", rows // 4)):
            r = train_ratio(work / "set", 128, 1 if args.quick else args.repeat, window, args.student)
            print(f"   {label}: replay on the training thread {r['thread']:,.0f} (ratio {r['thread'] / r['memory']:.2f}), "
                  f"prefetched {r['prefetch']:,.0f} (ratio {r['prefetch'] / r['memory']:.2f}), from memory {r['memory']:,.0f}; "
                  f"the views batches alone {r['alone']:,.0f}")
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
