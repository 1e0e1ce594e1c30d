"""`transferset generate` against the Hugging Face `datasets` path and the bare teacher
loop, each as the whole process a user starts (interpreter, imports, teacher loading and
writing included), on the same `.pt2` teacher files and the same Parquet source.

    python benchmarks/bench_vs_hf.py                    # 60k and 240k rows, 3 paired rounds (~10 min on 2 cores)
    python benchmarks/bench_vs_hf.py --quick            # a smoke run: 10k and 40k rows, 1 round, narrow teachers
    python benchmarks/bench_vs_hf.py --device cuda --teacher-width 8192    # on a GPU machine
    python benchmarks/bench_vs_hf.py --skip-hf          # without the `datasets` package

The three arms (one process each, timed from launch to exit):

    generate  `python -m cli generate --teacher t1.pt2 --teacher t2.pt2 --teacher t3.pt2
              --source SRC --input-shape 1,28,28 --input-scale 1/255 --combine geometric
              -T 4 --batch-size B --out OUT --quiet` (float16 dense targets, the default)
    hf        what the `datasets` docs recommend: `Dataset.from_parquet` ->
              `with_format("numpy").map(fn, batched=True, batch_size=B)` -> `save_to_disk`,
              where fn runs the same programs and stores the same geometric mean at T as
              float16 (this file's `hf_arm`)
    bare      load the pixel column into one array, run the teachers batch by batch and
              discard the outputs (`bare_arm`): the limit, nothing written

Teachers: K MLPs 784-W-W-10 (W = --teacher-width, 1200 by default, as in Hinton et al.),
exported with `torch.export` (dynamic batch). Source: MNIST's 60,000 training images
(`../shared/datasets/mnist`, written by `transferset convert`), tiled to the larger sizes
(240k = 4 copies) so the per-row slope shows beside the start-up. Rounds run the arms
interleaved (generate, hf, bare, generate, hf, bare, ...) so slow phases of a shared
machine hit every arm alike; the table gives medians with [min-max], and each ratio is
the median of the per-round ratios with its [min-max].

The `hf` arm imports `datasets` (a benchmark-only dependency, not one of transferset's);
the rest needs only torch, pyarrow and numpy. Nothing outside --work is written, and
--work is deleted unless --keep.
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
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
ARMS = ("generate", "hf", "bare")


# -- the arms that are not transferset (each runs as its own process) ----------------------


def load_programs(paths: list[str], device: str):
    import torch

    return [torch.export.load(p).module().to(device) for p in paths]


def hf_arm(a: argparse.Namespace) -> None:
    """The Hugging Face path, written as its docs recommend for batched inference."""
    import numpy as np
    import torch
    from datasets import Dataset

    teachers = load_programs(a.teachers, a.device)
    t = a.temperature

    def label(batch):
        x = torch.from_numpy(batch["pixels"]).to(a.device, torch.float32).mul_(1 / 255).view(-1, 1, 28, 28)
        with torch.inference_mode():
            logits = torch.stack([teacher(x) for teacher in teachers]).float()  # (K, B, C)
            mean = torch.log_softmax(logits / t, dim=-1).mean(0)  # geometric mean of the tempered members
            stored = t * (mean - mean.max(dim=-1, keepdim=True).values)  # softmax(stored / T) is the mean
        return {"logits": stored.cpu().numpy().astype(np.float16)}

    ds = Dataset.from_parquet(a.source, cache_dir=a.cache)
    ds = ds.with_format("numpy").map(label, batched=True, batch_size=a.batch_size)
    ds.save_to_disk(a.out)


def bare_arm(a: argparse.Namespace) -> None:
    """The limit: the pixels as one array, the teachers over it batch by batch, nothing kept."""
    import numpy as np
    import pyarrow.parquet as pq
    import torch

    column = pq.read_table(a.source, columns=["pixels"]).column("pixels").combine_chunks()
    pixels = column.flatten().to_numpy().reshape(len(column), 1, 28, 28)
    teachers = load_programs(a.teachers, a.device)
    with torch.inference_mode():
        for i in range(0, len(pixels), a.batch_size):
            x = torch.from_numpy(pixels[i:i + a.batch_size].astype(np.float32)).to(a.device).mul_(1 / 255)
            for teacher in teachers:
                teacher(x)
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()


def run_arm(argv: list[str]) -> None:
    """A child process: one arm, the (untimed) setup, or the targets check. The parent
    imports neither torch nor pyarrow, so each child's peak RSS is its own (a forked
    child starts with its parent's pages)."""
    p = argparse.ArgumentParser()
    p.add_argument("--arm", choices=("hf", "bare", "setup", "check"), required=True)
    p.add_argument("--source")
    p.add_argument("--teachers", nargs="+")
    p.add_argument("--out")
    p.add_argument("--cache")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--threads", type=int)
    p.add_argument("--work", type=Path)
    p.add_argument("--sizes")
    p.add_argument("--teacher-width", type=int)
    a = p.parse_args(argv)
    if a.arm == "setup":
        make_sources(a.work, [int(n) for n in a.sizes.split(",")])
        make_teachers(a.work, int(a.teachers[0]), a.teacher_width)
        return
    if a.arm == "check":
        print(f"{check_same_targets(Path(a.source), Path(a.out)):.3g}")
        return
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    (hf_arm if a.arm == "hf" else bare_arm)(a)


# -- setup: sources and teacher files (not timed) ----------------------------------------------


def source_path(work: Path, rows: int) -> Path:
    return work / f"mnist-{rows}.parquet"


def teacher_paths(work: Path, count: int) -> list[Path]:
    return [work / f"teacher-{seed}.pt2" for seed in range(1, count + 1)]


def make_sources(work: Path, sizes: list[int]) -> None:
    """One source per size: `transferset convert` of MNIST's training images, tiled past 60k."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = work / "mnist-train.parquet"
    images, labels = MNIST / "train-images-idx3-ubyte.gz", MNIST / "train-labels-idx1-ubyte.gz"
    if not images.exists():  # e.g. a GPU machine without ../shared: same shapes and types, random values
        import numpy as np

        rng = np.random.default_rng(0)
        images, labels = work / "pixels.npy", work / "labels.npy"
        np.save(images, rng.integers(0, 256, (60000, 28, 28), dtype=np.uint8))
        np.save(labels, rng.integers(0, 10, 60000).astype(np.uint8))
        print(f"{MNIST} not found: random 28x28 uint8 images instead (timings only)")
    subprocess.run([sys.executable, "-m", "cli", "convert", "--images", str(images), "--labels", str(labels), "--out", str(base),
                    "--quiet"], cwd=ROOT, check=True)
    table = pq.read_table(base)
    for n in sizes:
        path = source_path(work, n)
        if n != table.num_rows:
            tiled = pa.concat_tables([table] * -(-n // table.num_rows)).slice(0, n)
            tiled = tiled.set_column(tiled.schema.get_field_index("row"), "row", pa.array(range(n), pa.int64()))
            pq.write_table(tiled.cast(table.schema), path, row_group_size=32768, compression="zstd")  # convert's row groups
        else:
            shutil.copy(base, path)


def make_teachers(work: Path, count: int, width: int) -> None:
    """`count` MLPs 784-width-width-10 as torch.export programs with a dynamic batch."""
    import torch

    sys.path.insert(0, str(HERE))
    import bench_models

    for seed, path in enumerate(teacher_paths(work, count), start=1):
        model = bench_models.mlp(seed, hidden=(width, width)).eval()
        program = torch.export.export(model, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
        torch.export.save(program, str(path))


# -- timing ----------------------------------------------------------------------------------


@dataclass
class Run:
    wall: float
    cpu: float  # user + system seconds of the process and its children
    peak_mib: float
    bytes: int


@dataclass
class Cell:
    runs: list[Run] = field(default_factory=list)


def timed(cmd: list[str], out: Path | None) -> Run:
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{stderr.decode(errors='replace')[-2000:]}")
    written = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) if out is not None and out.exists() else 0
    return Run(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, written)


def arm_command(arm: str, a: argparse.Namespace, source: Path, teachers: list[Path], out: Path, cache: Path) -> list[str]:
    threads = ["--threads", str(a.threads)] if a.threads else []
    if arm == "generate":
        members = [x for t in teachers for x in ("--teacher", str(t))]
        return [sys.executable, "-m", "cli", "generate", *members, "--source", str(source), "--input-column", "pixels",
                "--input-shape", "1,28,28", "--input-scale", "1/255", "--combine", "geometric", "-T", "4",
                "--batch-size", str(a.batch_size), "--device", a.device, "--out", str(out), "--quiet", *threads, *a.generate_arg]
    return [sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--source", str(source),
            "--teachers", *map(str, teachers), "--out", str(out), "--cache", str(cache), "--device", a.device,
            "--batch-size", str(a.batch_size), *threads]


def check_same_targets(ours: Path, theirs: Path) -> float:
    """Largest |difference| between transferset's stored logits and the HF arm's (same rows, same order)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    mine = pq.read_table(sorted(ours.glob("part-*.parquet")), columns=["logits"]).column("logits").combine_chunks()
    tables = []
    for arrow in sorted(theirs.glob("*.arrow")):
        with pa.memory_map(str(arrow)) as f:
            tables.append(pa.ipc.open_stream(f).read_all())
    other = pa.concat_tables(tables).column("logits").combine_chunks()
    a = mine.flatten().to_numpy().astype(np.float32)
    b = other.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return float(np.abs(a - b).max())


# -- the table -------------------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    med = statistics.median(values)
    return f"{med:{fmt}}" if len(values) == 1 else f"{med:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"


def report(a: argparse.Namespace, cells: dict[tuple[str, int], Cell], arms: list[str]) -> None:
    print(f"\n{a.teachers} x MLP 784-{a.teacher_width}-{a.teacher_width}-10 (.pt2), geometric T=4, float16, batch {a.batch_size}, "
          f"device {a.device}, threads {a.threads or 'default'}, {a.rounds} paired round(s); medians [min-max]\n")
    print("| rows | arm | wall s | CPU s | peak MiB | output MiB | rows/s |")
    print("|---|---|---|---|---|---|---|")
    for n in a.sizes:
        for arm in arms:
            runs = cells[arm, n].runs
            walls = [r.wall for r in runs]
            print(f"| {n:,} | {arm} | {spread(walls, '.2f')} | {spread([r.cpu for r in runs], '.1f')} | "
                  f"{statistics.median(r.peak_mib for r in runs):,.0f} | {statistics.median(r.bytes for r in runs) / 2**20:,.1f} | "
                  f"{n / statistics.median(walls):,.0f} |")
    pairs = [(x, y) for x, y in (("generate", "bare"), ("hf", "bare"), ("generate", "hf")) if x in arms and y in arms]
    print("\n| rows | " + " | ".join(f"{x} / {y}" for x, y in pairs) + " |")
    print("|---|" + "---|" * len(pairs))
    for n in a.sizes:
        for what in ("wall", "cpu"):
            ratios = [[getattr(cx, what) / getattr(cy, what) for cx, cy in zip(cells[x, n].runs, cells[y, n].runs)] for x, y in pairs]
            print(f"| {n:,} ({what if what == 'wall' else 'CPU'}) | " + " | ".join(spread(r, ".3f") for r in ratios) + " |")
    if len(a.sizes) > 1:
        lo, hi = a.sizes[0], a.sizes[-1]
        print(f"\nper-row slope between {lo:,} and {hi:,} rows (us/row; start-up cancels out):")
        for arm in arms:
            slope = (statistics.median(r.wall for r in cells[arm, hi].runs) - statistics.median(r.wall for r in cells[arm, lo].runs)) / (hi - lo)
            print(f"  {arm:9s} {slope * 1e6:7.1f}")


def main() -> None:
    if "--arm" in sys.argv:
        return run_arm(sys.argv[1:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default=None, help="rows per source, comma-separated (default 60000,240000; --quick 10000,40000)")
    p.add_argument("--rounds", type=int, default=None, help="paired rounds (default 3; --quick 1)")
    p.add_argument("--teachers", type=int, default=3)
    p.add_argument("--teacher-width", type=int, default=None, help="hidden width W of the 784-W-W-10 teachers (default 1200; --quick 256)")
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, help="torch threads in every arm (default: each process's own choice)")
    p.add_argument("--skip-hf", action="store_true", help="leave out the Hugging Face arm (no `datasets` needed)")
    p.add_argument("--arms", default=None, help="a subset of generate,hf,bare (default: all three)")
    p.add_argument("--generate-arg", action="append", default=[], help="an extra argument for `generate` (repeat), e.g. --generate-arg=--threads=1")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep --work")
    a = p.parse_args()
    a.sizes = [int(s) for s in (a.sizes or ("10000,40000" if a.quick else "60000,240000")).split(",")]
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.teacher_width = a.teacher_width or (256 if a.quick else 1200)
    arms = [x for x in (a.arms.split(",") if a.arms else ARMS) if not (a.skip_hf and x == "hf")]
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-vs-hf-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--arm", "setup", "--work", str(work), "--sizes",
                        ",".join(map(str, a.sizes)), "--teachers", str(a.teachers), "--teacher-width", str(a.teacher_width)],
                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        sources = {n: source_path(work, n) for n in a.sizes}
        teachers = teacher_paths(work, a.teachers)
        cells = {(arm, n): Cell() for arm in arms for n in a.sizes}
        for r in range(a.rounds):
            for n in a.sizes:
                for arm in arms:
                    out, cache = work / f"out-{arm}-{n}", work / f"cache-{arm}-{n}"
                    for old in (out, cache):
                        shutil.rmtree(old, ignore_errors=True)  # every run starts cold, as a user's first run does
                    run = timed(arm_command(arm, a, sources[n], teachers, out, cache), out if arm != "bare" else None)
                    cells[arm, n].runs.append(run)
                    print(f"round {r + 1}, {n:,} rows, {arm}: {run.wall:.2f} s", flush=True)
                if r == 0 and "generate" in arms and "hf" in arms:
                    diff = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--arm", "check", "--source",
                                           str(work / f"out-generate-{n}"), "--out", str(work / f"out-hf-{n}")],
                                          cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()
                    print(f"  same targets in both sets: largest |difference| {diff} (float16 rounding)", flush=True)
        report(a, cells, arms)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
