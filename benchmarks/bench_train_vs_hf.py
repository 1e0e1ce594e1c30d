"""`transferset train` against a Hugging Face `datasets` + DataLoader loop and the same loop
over tensors already in memory: one student epoch each, as whole processes.

    python benchmarks/bench_train_vs_hf.py                 # 60k and 240k rows, 2 paired rounds (~8 min on 2 cores)
    python benchmarks/bench_train_vs_hf.py --quick         # smoke: 10k rows, 1 round, a small student

The transfer set is made once, untimed, by `transferset generate` (3 teachers 784-256-256-10,
geometric, T = 4, float16 targets) over bench_vs_hf's MNIST source (tiled past 60k,
32,768-row groups). The student is `train.students:mlp` 784-800-800-10 in every arm, SGD
lr 0.05 momentum 0.9, batch 128, the soft loss T^2 KL(p_T || q_T), 1 torch thread:

    transferset  `transferset train --transfer SET --epochs 1 ...`: verify, stream, export included
    hf           `Dataset.from_parquet(shards).with_format("torch")` -> `DataLoader(batch_size=128,
                 shuffle=True, num_workers=0)`, pixels / 255 per batch (what the datasets docs show)
    memory       every pixel and target read into float32 tensors first, then a permutation per
                 epoch and an index gather per batch: the limit

Each arm reports its whole-process wall time and peak RSS (bench_vs_hf's `timed`; this
parent imports neither torch nor pyarrow) and its epoch time inside the process (the
transferset arm: the `seconds` of its metrics record). Ratios are medians of per-round
ratios, with [min-max].
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from bench_vs_hf import source_path, teacher_paths, timed  # noqa: E402

ARMS = ("transferset", "hf", "memory")
T = 4.0


def _student(hidden: str):
    import torch

    from train.students import mlp

    torch.manual_seed(0)
    return mlp(10, (1, 28, 28), hidden=tuple(int(h) for h in hidden.split(",")))


def _step(model, optimiser, x, logits):
    import torch

    log_q = torch.log_softmax(model(x) / T, dim=-1)
    loss = T * T * torch.nn.functional.kl_div(log_q, torch.log_softmax(logits / T, dim=-1), log_target=True, reduction="batchmean")
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    optimiser.step()


def loop_arm(arm: str, directory: str, hidden: str, result: str) -> None:
    """The hf or memory arm: one epoch; writes {"epoch_s": ...} to `result`."""
    import torch

    torch.set_num_threads(1)
    shards = sorted(str(p) for p in Path(directory).glob("part-*.parquet"))
    model = _student(hidden)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if arm == "hf":
        import datasets

        data = datasets.Dataset.from_parquet(shards, columns=["pixels", "logits"]).with_format("torch")
        loader = torch.utils.data.DataLoader(data, batch_size=128, shuffle=True, num_workers=0,
                                             generator=torch.Generator().manual_seed(0))
        started = time.perf_counter()
        for batch in loader:
            _step(model, optimiser, batch["pixels"].float().view(-1, 1, 28, 28) / 255, batch["logits"].float())
    else:
        import numpy as np
        import pyarrow.parquet as pq

        table = pq.read_table(shards, columns=["pixels", "logits"])
        pixels = torch.from_numpy(np.stack(table.column("pixels").to_numpy(zero_copy_only=False)).astype(np.float32) / 255).view(-1, 1, 28, 28)
        logits = torch.from_numpy(np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32))
        del table
        started = time.perf_counter()
        for index in torch.randperm(len(pixels), generator=torch.Generator().manual_seed(0)).split(128):
            _step(model, optimiser, pixels.index_select(0, index), logits.index_select(0, index))
    Path(result).write_text(json.dumps({"epoch_s": time.perf_counter() - started}))


def make_set(work: Path, rows: int, a) -> Path:
    """The transfer set the arms read (untimed): generate over the tiled MNIST source."""
    out = work / f"set-{rows}"
    members = [x for t in teacher_paths(work, 3) for x in ("--teacher", str(t))]
    subprocess.run([sys.executable, "-m", "cli", "generate", *members, "--source", str(source_path(work, rows)), "--input-column", "pixels",
                    "--input-shape", "1,28,28", "--input-scale", "1/255", "-T", str(T), "--threads", "1", "--out", str(out), "--quiet"],
                   cwd=ROOT, check=True)
    return out


def run_arm(arm: str, directory: Path, a, work: Path) -> tuple[float, object]:
    """(epoch seconds inside the process, the whole-process Run)."""
    result = work / f"result-{arm}.json"
    if arm == "transferset":
        out = work / "run"
        run = timed([sys.executable, "-m", "cli", "train", "--transfer", str(directory), "--epochs", "1", "--student-arg",
                     f"hidden={a.hidden}", "--lr", "0.05", "--warmup-steps", "0", "--grad-clip", "0", "--threads", "1",
                     "--out", str(out), "--quiet", "--overwrite", "--json"], None)
        record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
        return record["seconds"], run
    run = timed([sys.executable, str(Path(__file__).resolve()), "--arm", arm, "--set", str(directory), "--hidden", a.hidden,
                 "--result", str(result)], None)
    return json.loads(result.read_text())["epoch_s"], run


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arm", help=argparse.SUPPRESS)
    p.add_argument("--set", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--hidden", default="800,800")
    p.add_argument("--sizes", default="60000,240000")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", type=Path)
    a = p.parse_args()
    if a.arm:
        return loop_arm(a.arm, a.set, a.hidden, a.result)
    if a.quick:
        a.sizes, a.rounds, a.hidden = "10000", 1, "64,64"
    sizes = [int(s) for s in a.sizes.split(",")]
    work = a.work or Path(tempfile.mkdtemp(prefix="bench-train-vs-hf-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run([sys.executable, str(HERE / "bench_vs_hf.py"), "--arm", "setup", "--work", str(work), "--sizes", a.sizes,
                        "--teachers", "3", "--teacher-width", "256"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        sets = {n: make_set(work, n, a) for n in sizes}
        cells = {(arm, n): [] for arm in ARMS for n in sizes}
        for _ in range(a.rounds):
            for n in sizes:
                for arm in ARMS:
                    cells[arm, n].append(run_arm(arm, sets[n], a, work))
                    print(f"{n:,} rows, {arm}: epoch {cells[arm, n][-1][0]:.2f} s, process {cells[arm, n][-1][1].wall:.2f} s, "
                          f"peak {cells[arm, n][-1][1].peak_mib:.0f} MiB", flush=True)
        report(cells, sizes)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)


def report(cells: dict, sizes: list[int]) -> None:
    print(f"\n{'rows':>8} {'arm':<12}{'epoch s':>9}{'process s':>11}{'peak MiB':>10}{'epoch / memory':>22}{'peak / hf':>18}")
    for n in sizes:
        for arm in ARMS:
            epoch = [e for e, _ in cells[arm, n]]
            ratio = [e / m for (e, _), (m, _) in zip(cells[arm, n], cells["memory", n])]
            peak = [r.peak_mib / h.peak_mib for (_, r), (_, h) in zip(cells[arm, n], cells["hf", n])]
            print(f"{n:>8,} {arm:<12}{statistics.median(epoch):>9.2f}{statistics.median(r.wall for _, r in cells[arm, n]):>11.2f}"
                  f"{statistics.median(r.peak_mib for _, r in cells[arm, n]):>10.0f}"
                  f"{statistics.median(ratio):>9.3f} [{min(ratio):.3f}-{max(ratio):.3f}]"
                  f"{statistics.median(peak):>7.3f} [{min(peak):.2f}-{max(peak):.2f}]")


if __name__ == "__main__":
    main()
