"""How fast the specialist-ensemble solver (transferset/specialists.py) is on the CPU,
and how many EM steps it needs.

    python benchmarks/bench_specialists.py [--rows 8192] [--batch 1024] [--threads 1]

For C = 10 and C = 1,000 classes with 10 specialists (disjoint subsets: 3 classes
each for C = 10 with overlaps allowed, 20 each for C = 1,000), one generalist, T = 2:

* gated:  the real rule (a specialist votes where the generalist's top-1 class is
          one of its own), through `combine_specialists` (softmaxes, vote, solve).
* worst:  every specialist votes on every row (`top` = C), the solver alone.

The logits are random but shaped like a trained ensemble's: the generalist is
confident on a random class, and each specialist agrees with it on its own classes
(else it puts its mass on the dustbin), with noise. Prints rows/s (median of
--repeat), the EM steps per batch (max over the batches: a batch stops when its
slowest row converges) and the largest remaining bound on F(q) - min F.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transferset.specialists import Specialists, active_specialists, combine_specialists, solve  # noqa: E402


def make_case(rows: int, num_classes: int, num_specialists: int, per_specialist: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    truth = torch.randint(num_classes, (rows,), generator=g)
    general = torch.randn(1, rows, num_classes, generator=g) * 2
    general[0, torch.arange(rows), truth] += 6  # confident, like a trained generalist
    if num_classes >= num_specialists * per_specialist:
        order = torch.randperm(num_classes, generator=g)
        classes = [order[i * per_specialist:(i + 1) * per_specialist].sort().values for i in range(num_specialists)]
    else:  # more specialist slots than classes: overlapping subsets
        classes = [torch.randperm(num_classes, generator=g)[:per_specialist].sort().values for _ in range(num_specialists)]
    special = []
    for s in classes:
        z = torch.randn(rows, len(s) + 1, generator=g) * 2
        hit = (truth[:, None] == s[None, :])  # (rows, n)
        z[:, :-1] += 6 * hit
        z[:, -1] += 6 * ~hit.any(dim=1)
        special.append(z)
    return general, classes, special


def timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def gated(general, classes, special, batch, temperature):
    weights = torch.ones(len(classes))
    for start in range(0, general.shape[1], batch):
        rows = slice(start, start + batch)
        combine_specialists(general[:, rows], torch.ones(1), Specialists([z[rows] for z in special], classes, weights, 1), temperature)


def worst(general, classes, special, batch, temperature):
    steps, gap = [], 0.0
    log_pg = torch.log_softmax(general / temperature, -1)
    log_ps = [torch.log_softmax(z / temperature, -1) for z in special]
    for start in range(0, general.shape[1], batch):
        rows = slice(start, start + batch)
        n = log_pg[:, rows].shape[1]
        sol = solve(log_pg[:, rows], torch.ones(1), [p[rows] for p in log_ps], classes, torch.ones(len(classes)),
                    torch.ones(len(classes), n, dtype=torch.bool))
        steps.append(sol.iterations)
        gap = max(gap, float(sol.gap.max()))
    return steps, gap


def gated_steps(general, classes, special, batch, temperature):
    """EM steps per batch under the top-1 vote (and the share of rows some specialist votes on)."""
    steps, voted = [], 0
    log_pg = torch.log_softmax(general / temperature, -1)
    log_ps = [torch.log_softmax(z / temperature, -1) for z in special]
    for start in range(0, general.shape[1], batch):
        rows = slice(start, start + batch)
        active = active_specialists(log_pg[0, rows], classes, 1)
        voted += int(active.any(dim=0).sum())
        steps.append(solve(log_pg[:, rows], torch.ones(1), [p[rows] for p in log_ps], classes, torch.ones(len(classes)), active).iterations)
    return steps, voted / general.shape[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.rows} rows in batches of {args.batch}, T = {args.temperature:g}")
    print(f"{'C':>6} {'M':>3} {'n/spec':>6} | {'gated rows/s':>12} {'voted':>6} {'steps':>9} | {'worst rows/s':>12} {'steps':>9} {'max gap':>8}")
    for num_classes, per_specialist in ((10, 3), (1000, 20)):
        general, classes, special = make_case(args.rows, num_classes, 10, per_specialist)
        t_gated, _ = timed(lambda: gated(general, classes, special, args.batch, args.temperature), args.repeat)
        steps_gated, voted = gated_steps(general, classes, special, args.batch, args.temperature)
        t_worst, (steps_worst, gap) = timed(lambda: worst(general, classes, special, args.batch, args.temperature), args.repeat)
        print(f"{num_classes:>6} {10:>3} {per_specialist:>6} | {args.rows / t_gated:>12,.0f} {voted:>6.0%} "
              f"{min(steps_gated)}-{max(steps_gated):<5} | {args.rows / t_worst:>12,.0f} {min(steps_worst)}-{max(steps_worst):<5} {gap:>8.1e}")


if __name__ == "__main__":
    main()
