"""Inputs copied into the set (`generate --inputs copy`, the default) against inputs by
reference (`--inputs reference`: each row names its source row, readers join the source).

    python benchmarks/bench_reference.py                      # 240k MNIST rows, 3 teachers 784-1200-1200-10, 2 rounds
    python benchmarks/bench_reference.py --quick              # smoke: 20k rows, narrow teachers, 1 round

Every arm is the whole process a user starts (bench_vs_hf.py's `timed`: wall, CPU
seconds, peak RSS), run in paired rounds (copy, reference, copy, reference, ...):

    generate  `transferset generate` of the K `.pt2` teachers over the source, --inputs copy | reference
    stream    one epoch of `StreamSource` batches from the set, no model (this file's `--arm stream`):
              the read, decode and (for reference) join cost alone, with the default 256 MB window,
              so a 240k-row MNIST set is read as several windows, as a large set would be
    train     `transferset train --transfer SET --epochs 1` of a 784-800-800-10 student (verify included:
              for a reference set that is also the source's sha256)

Printed: medians per arm and mode, each reference/copy ratio with its per-round [min-max],
and the bytes of each set. The source is bench_vs_hf's (MNIST training images tiled,
32,768-row groups; random pixels where ../shared is absent).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from bench_vs_hf import source_path, teacher_paths, timed  # noqa: E402

MODES = ("copy", "reference")


def stream_arm(directory: str) -> None:
    """One epoch of batches (batch 128), as the trainer reads them; nothing else."""
    import torch

    from train.stream import StreamSource

    torch.set_num_threads(1)
    source = StreamSource.open_transfer_set(directory)
    rows = sum(len(batch.labels) for batch in source.epoch(batch_size=128, seed=0, epoch=0))
    assert rows == source.num_rows


def commands(arm: str, mode: str, a, work: Path) -> tuple[list[str], Path | None]:
    source, out = source_path(work, a.rows), work / f"set-{mode}"
    if arm == "generate":
        members = [x for t in teacher_paths(work, a.teachers) for x in ("--teacher", str(t))]
        return [sys.executable, "-m", "cli", "generate", *members, "--source", str(source), "--input-column", "pixels",
                "--input-shape", "1,28,28", "--input-scale", "1/255", "-T", "4", "--threads", "1", "--inputs", mode,
                "--out", str(out), "--quiet", "--overwrite"], out
    if arm == "stream":
        return [sys.executable, str(Path(__file__).resolve()), "--arm", "stream", str(out)], None
    return [sys.executable, "-m", "cli", "train", "--transfer", str(out), "--epochs", "1", "--student-arg", "hidden=800,800",
            "--threads", "1", "--out", str(work / f"run-{mode}"), "--quiet", "--overwrite"], None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("directory", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, default=240_000)
    p.add_argument("--teachers", type=int, default=3)
    p.add_argument("--teacher-width", type=int, default=1200)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="20k rows, 2 teachers of width 64, 1 round")
    p.add_argument("--work", type=Path, help="working directory (default: a temporary one, deleted after)")
    a = p.parse_args()
    if a.arm == "stream":
        return stream_arm(a.directory)
    if a.quick:
        a.rows, a.teachers, a.teacher_width, a.rounds = 20_000, 2, 64, 1
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-reference-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # bench_vs_hf's setup, in a child: this process imports neither torch nor pyarrow, so each
        # arm's peak RSS is its own (a forked child starts with its parent's pages)
        subprocess.run([sys.executable, str(HERE / "bench_vs_hf.py"), "--arm", "setup", "--work", str(work), "--sizes", str(a.rows),
                        "--teachers", str(a.teachers), "--teacher-width", str(a.teacher_width)], check=True, stdout=subprocess.DEVNULL)
        runs = {(arm, mode): [] for arm in ("generate", "stream", "train") for mode in MODES}
        started = time.perf_counter()
        for _ in range(a.rounds):
            for arm in ("generate", "stream", "train"):
                for mode in MODES:
                    cmd, out = commands(arm, mode, a, work)
                    runs[arm, mode].append(timed(cmd, out))
        report(a, runs, work, time.perf_counter() - started)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(a, runs: dict, work: Path, seconds: float) -> None:
    print(f"{a.rows:,} MNIST rows, {a.teachers} teachers 784-{a.teacher_width}-{a.teacher_width}-10, {a.rounds} round(s), "
          f"{seconds:.0f} s in all (whole processes; medians, ratio per round [min-max])")
    print(f"{'arm':<10}{'copy s':>10}{'reference s':>13}{'ref/copy wall':>22}{'ref/copy CPU':>14}{'peak MiB copy/ref':>20}")
    for arm in ("generate", "stream", "train"):
        copy, ref = runs[arm, "copy"], runs[arm, "reference"]
        ratios = [r.wall / c.wall for c, r in zip(copy, ref)]
        cpu = statistics.median(r.cpu / c.cpu for c, r in zip(copy, ref))
        peak = f"{statistics.median(c.peak_mib for c in copy):.0f}/{statistics.median(r.peak_mib for r in ref):.0f}"
        print(f"{arm:<10}{statistics.median(c.wall for c in copy):>10.2f}{statistics.median(r.wall for r in ref):>13.2f}"
              f"{statistics.median(ratios):>10.3f} [{min(ratios):.3f}-{max(ratios):.3f}]{cpu:>14.3f}{peak:>20}")
    for mode in MODES:
        shards = sum(p.stat().st_size for p in (work / f"set-{mode}").glob("part-*.parquet"))
        print(f"set {mode:<10} {shards / 1e6:8.2f} MB of shards, {shards / a.rows:7.1f} B/row")
    print(f"source      {source_path(work, a.rows).stat().st_size / 1e6:8.2f} MB (read by the reference set's readers)")


if __name__ == "__main__":
    main()
