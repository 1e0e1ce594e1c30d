"""The order of one epoch: which rows, in which batches, on which rank and worker.

Pure functions of (row-group sizes, seed, epoch, ...): no I/O, no globals, so any
process (another rank, a DataLoader worker, a resumed run) recomputes the same
order, and the invariants are tested in milliseconds.

The epoch order, in three steps (mosaicml/streaming's shuffle by blocks):

1. permute the row groups, seeded by (seed, epoch);
2. cut the permuted row groups into windows of `window` consecutive row groups.
   A window is the shuffle buffer: the reader holds one window in memory (and
   the next, read ahead), so memory follows the window, not the dataset. Inside a window the row groups
   are listed in file order, so the same row groups always give the same local
   row numbering (a reader may keep a window that every epoch needs);
3. permute the rows inside each window, seeded by (seed, epoch, window index).

The concatenated windows give the epoch order: positions 0..N-1, each naming one
row. Everything after that works on positions.

Ranks (torchrun). `batch_size` is the GLOBAL batch: global batch k holds epoch
positions [k*B, (k+1)*B), and rank r of W takes the r-th of W contiguous slices
of it (B/W rows each; `train` refuses a B that W does not divide). So the rows of
every optimiser step, and the position a checkpoint records (epoch, global batches
applied), are the same on any number of processes: a run with W ranks computes the
gradient of the same rows as one process, and a checkpoint written on 4 ranks
resumes on 2 (or 1) with each remaining row seen exactly once. Every rank yields
the same number of batches K = ceil(N / B), so no collective can hang. The last
global batch may be short; its rows are split as evenly (slices differ by at most
one row). If it has fewer rows than there are ranks (N mod B < W), some rank
would get an empty batch: those < W rows at the end of the epoch order are
skipped instead (different rows each epoch when shuffling; never on one process).
drop_last: K = N // B full batches; the N mod B rows at the end are skipped.
The price of slicing global batches: every rank reads every window (each global
batch takes rows from one or two windows), so W ranks on one machine decode the
set W times. Reading ran at ~700k rows/s per process against ~34k rows/s for a
small MLP step (NOTES.md), so this costs a few percent of a step, and buys
world-size-independent order and resume (mosaicml/streaming's reason for its
canonical sample order).

Workers. DataLoader worker w of a rank gets a contiguous range of that rank's
batches (so it reads only its own windows, plus at most one shared window at each
end); counts differ by at most one, larger first. DataLoader takes batches from
its workers round robin, starting at worker 0, so loader position k is the
(k // W)-th batch of worker k % W. The loader's order therefore differs from the
single-process order, and a resumed run must use the same number of workers.
A resumed DataLoader starts again at worker 0, so worker w takes the part of
worker (w + start) % W of the uninterrupted run (`resume_worker_batches`), and the
round robin continues exactly where it stopped.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

_SEED_MASK = (1 << 64) - 1  # SeedSequence takes non-negative ints: fold any int seed into 64 bits


def _rng(seed: int, epoch: int, stream: int) -> np.random.Generator:
    # One independent stream per (seed, epoch, purpose): 0 = row groups, 1 + i = window i.
    # NumPy keeps Generator streams stable across releases in practice but does not
    # promise it: resuming after a NumPy upgrade could change the order of the rest of an epoch.
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed & _SEED_MASK, epoch & _SEED_MASK, stream])))


@dataclass(frozen=True)
class Window:
    """One shuffle buffer: row groups read together, rows permuted among them."""

    index: int
    row_groups: tuple[int, ...]  # indices into row_group_sizes, ascending; their rows concatenated in this order
    start: int  # epoch position of the window's first row
    rows: int
    seed: int
    epoch: int
    shuffle: bool

    @property
    def stop(self) -> int:
        return self.start + self.rows

    def order(self) -> np.ndarray:
        """int64 [rows]: epoch position start + p holds local row order()[p], where
        local rows number the concatenation of `row_groups` from 0."""
        if not self.shuffle:
            return np.arange(self.rows, dtype=np.int64)
        return _rng(self.seed, self.epoch, 1 + self.index).permutation(self.rows).astype(np.int64, copy=False)


def epoch_plan(row_group_sizes: list[int], seed: int, epoch: int, window: int, shuffle: bool = True) -> list[Window]:
    """The windows of one epoch, in reading order (see the module docstring)."""
    if window < 1:
        raise ValueError(f"window must be >= 1 row group, got {window}")
    if any(size < 0 for size in row_group_sizes):
        raise ValueError("row group sizes must be >= 0")
    groups = np.arange(len(row_group_sizes), dtype=np.int64)
    if shuffle:
        groups = _rng(seed, epoch, 0).permutation(groups)
    windows, start = [], 0
    for index, first in enumerate(range(0, len(groups), window)):
        members = tuple(sorted(int(g) for g in groups[first : first + window]))
        rows = sum(row_group_sizes[g] for g in members)
        windows.append(Window(index, members, start, rows, seed, epoch, shuffle))
        start += rows
    return windows


def windows_between(windows: list[Window], lo: int, hi: int) -> list[Window]:
    """The windows holding epoch positions [lo, hi), in order."""
    if hi <= lo:
        return []
    starts = [w.start for w in windows]
    first = bisect.bisect_right(starts, lo) - 1
    last = bisect.bisect_left(starts, hi)
    return [w for w in windows[max(first, 0) : last] if w.rows and w.stop > lo]


@dataclass(frozen=True)
class RankPart:
    """Rank `rank`'s slice of each of the epoch's global batches (see the module docstring)."""

    used_rows: int  # epoch positions [0, used_rows) are read; the rest of the order is skipped
    batch_size: int  # the global batch
    world_size: int
    rank: int
    num_batches: int

    def global_bounds(self, k: int) -> tuple[int, int]:
        """Epoch positions [lo, hi) of global batch k (all ranks together)."""
        if not 0 <= k < self.num_batches:
            raise IndexError(f"batch {k} of {self.num_batches}")
        lo = k * self.batch_size
        return lo, min(lo + self.batch_size, self.used_rows)

    def batch_bounds(self, k: int) -> tuple[int, int]:
        """Epoch positions [lo, hi) of this rank's part of global batch k (never empty)."""
        lo, hi = self.global_bounds(k)
        each, extra = divmod(hi - lo, self.world_size)
        start = lo + self.rank * each + min(self.rank, extra)
        return start, start + each + (1 if self.rank < extra else 0)


def rank_part(num_rows: int, batch_size: int, world_size: int, rank: int, drop_last: bool) -> RankPart:
    """Rank `rank`'s part of every global batch of `batch_size` rows; the same
    num_batches on every rank."""
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need batch_size >= 1 and 0 <= rank < world_size, got {batch_size}, {rank}, {world_size}")
    if batch_size % world_size:
        raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
    if drop_last:
        k = num_rows // batch_size
        return RankPart(k * batch_size, batch_size, world_size, rank, k)
    if num_rows < world_size:
        raise ValueError(f"{num_rows} rows cannot give each of {world_size} ranks a batch")
    k = -(-num_rows // batch_size)  # ceil
    tail = num_rows - (k - 1) * batch_size
    if tail < world_size:  # a rank would get an empty batch: skip the tail
        return RankPart((k - 1) * batch_size, batch_size, world_size, rank, k - 1)
    return RankPart(num_rows, batch_size, world_size, rank, k)


def worker_batches(num_batches: int, num_workers: int, worker: int) -> range:
    """Worker `worker`'s contiguous range of its rank's batches (larger shares first)."""
    if num_workers < 1 or not 0 <= worker < num_workers:
        raise ValueError(f"need 0 <= worker < num_workers, got {worker}, {num_workers}")
    each, extra = divmod(num_batches, num_workers)
    first = worker * each + min(worker, extra)
    return range(first, first + each + (1 if worker < extra else 0))


def loader_skip(num_batches: int, num_workers: int, worker: int, start_batch: int) -> int:
    """How many of its batches `worker` had yielded when the DataLoader had yielded
    `start_batch` batches in all (round robin over workers; shares from `worker_batches`)."""
    done = max(0, -(-(start_batch - worker) // num_workers))  # count of k < start_batch with k % W == worker
    return min(done, len(worker_batches(num_batches, num_workers, worker)))


def resume_worker_batches(num_batches: int, num_workers: int, worker: int, start_batch: int) -> range:
    """The batches DataLoader worker `worker` yields when the loader resumes after
    `start_batch` batches of the uninterrupted run (loader order, same num_workers).

    Position p >= start_batch of the uninterrupted loader is batch p // W of worker
    p % W; the resumed loader's position t = p - start_batch comes from its worker
    t % W, so that worker plays the part of worker (t + start_batch) % W."""
    role = (worker + start_batch) % num_workers
    mine = worker_batches(num_batches, num_workers, role)
    return range(mine.start + loader_skip(num_batches, num_workers, role, start_batch), mine.stop)
