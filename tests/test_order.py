"""train/order.py: the epoch order, tested by invariants on odd sizes (117 rows, row groups of 10)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from train.order import epoch_plan, loader_skip, rank_part, resume_worker_batches, windows_between, worker_batches

SIZES = [10] * 11 + [7]  # 117 rows: the last row group and the last window are short


def rows_of(sizes: list[int]) -> list[np.ndarray]:
    """Global row numbers of each row group (row groups numbered in file order)."""
    starts = np.cumsum([0, *sizes])
    return [np.arange(starts[g], starts[g + 1]) for g in range(len(sizes))]


def epoch_rows(sizes, seed, epoch, window, shuffle=True) -> np.ndarray:
    """The global row at each epoch position."""
    groups = rows_of(sizes)
    out = []
    for w in epoch_plan(sizes, seed, epoch, window, shuffle):
        local = np.concatenate([groups[g] for g in w.row_groups]) if w.row_groups else np.array([], dtype=np.int64)
        out.append(local[w.order()])
    return np.concatenate(out)


def test_epoch_is_a_permutation_of_all_rows():
    order = epoch_rows(SIZES, seed=7, epoch=0, window=3)
    assert len(order) == 117, "Missing samples"
    assert len(set(order.tolist())) == 117, "Duplicate samples"
    assert sorted(order.tolist()) == list(range(117))


def test_same_seed_same_order_other_epoch_or_seed_differs():
    a = epoch_rows(SIZES, seed=7, epoch=0, window=3)
    assert np.array_equal(a, epoch_rows(SIZES, seed=7, epoch=0, window=3))
    assert not np.array_equal(a, epoch_rows(SIZES, seed=7, epoch=1, window=3))
    assert not np.array_equal(a, epoch_rows(SIZES, seed=8, epoch=0, window=3))


def test_no_shuffle_is_file_order():
    assert np.array_equal(epoch_rows(SIZES, seed=7, epoch=3, window=3, shuffle=False), np.arange(117))


def test_windows_are_contiguous_and_hold_whole_row_groups():
    plan = epoch_plan(SIZES, seed=1, epoch=2, window=5)
    assert [len(w.row_groups) for w in plan] == [5, 5, 2]
    assert sorted(g for w in plan for g in w.row_groups) == list(range(12))
    assert [w.start for w in plan] == [0, plan[0].stop, plan[1].stop]
    assert plan[-1].stop == 117
    for w in plan:
        assert list(w.row_groups) == sorted(w.row_groups), "local row numbering must not depend on the epoch"
        assert w.rows == sum(SIZES[g] for g in w.row_groups)
        assert sorted(w.order().tolist()) == list(range(w.rows))


def test_rows_are_shuffled_within_a_window_only():
    plan = epoch_plan(SIZES, seed=3, epoch=0, window=4)
    order = epoch_rows(SIZES, seed=3, epoch=0, window=4)
    groups = rows_of(SIZES)
    for w in plan:
        window_rows = set(np.concatenate([groups[g] for g in w.row_groups]).tolist())
        assert set(order[w.start : w.stop].tolist()) == window_rows
    assert not np.array_equal(plan[0].order(), np.arange(plan[0].rows)), "rows inside a window are not shuffled"


def test_windows_between_finds_the_windows_holding_a_range():
    plan = epoch_plan(SIZES, seed=3, epoch=0, window=4)  # three windows of 37 or 40 rows
    one, two = plan[0].stop, plan[1].stop
    assert [w.index for w in windows_between(plan, 0, 117)] == [0, 1, 2]
    assert [w.index for w in windows_between(plan, one - 1, one + 1)] == [0, 1]
    assert [w.index for w in windows_between(plan, one, two)] == [1]
    assert [w.index for w in windows_between(plan, one, two + 1)] == [1, 2]
    assert [w.index for w in windows_between(plan, 116, 117)] == [2]
    assert windows_between(plan, 50, 50) == []


def batches_of(num_rows, batch_size, world_size, drop_last):
    """{rank: [(lo, hi), ...]} for every rank."""
    return {
        r: [rank_part(num_rows, batch_size, world_size, r, drop_last).batch_bounds(k)
            for k in range(rank_part(num_rows, batch_size, world_size, r, drop_last).num_batches)]
        for r in range(world_size)
    }


def test_single_rank_cut_is_full_batches_then_one_short():
    [bounds] = batches_of(117, 10, 1, False).values()
    assert [hi - lo for lo, hi in bounds] == [10] * 11 + [7]
    [bounds] = batches_of(117, 10, 1, True).values()
    assert [hi - lo for lo, hi in bounds] == [10] * 11


def test_ranks_slice_each_global_batch_and_every_row_once():
    # 117 rows, global batch 4 over 2 ranks: 30 global batches, the last of 1 row (< 2 ranks): skipped.
    parts = batches_of(117, 4, 2, False)
    assert len(parts[0]) == len(parts[1]) == 29
    assert parts[0][:2] == [(0, 2), (4, 6)] and parts[1][:2] == [(2, 4), (6, 8)]
    positions = sorted(p for bounds in parts.values() for lo, hi in bounds for p in range(lo, hi))
    assert positions == list(range(116))
    # 118 rows: the last global batch has 2 rows, one per rank.
    parts = batches_of(118, 4, 2, False)
    assert parts[0][-1] == (116, 117) and parts[1][-1] == (117, 118)


def test_global_batches_do_not_depend_on_the_world_size():
    """What makes a checkpoint resumable on another number of processes: the rows of
    global batch k are the same on 1, 2 or 4 ranks."""
    for world_size in (1, 2, 4):
        parts = [rank_part(103, 8, world_size, r, False) for r in range(world_size)]
        for k in range(parts[0].num_batches):
            rows = sorted(p for part in parts for p in range(*part.batch_bounds(k)))
            assert rows == list(range(k * 8, min(k * 8 + 8, 103)))


def test_a_global_batch_the_world_size_does_not_divide_is_refused():
    with pytest.raises(ValueError, match="not divisible by 3 ranks"):
        rank_part(100, 8, 3, 0, False)


@settings(max_examples=300, deadline=None)
@given(
    num_rows=st.integers(1, 400),
    per_rank=st.integers(1, 12),
    world_size=st.integers(1, 9),
    drop_last=st.booleans(),
)
def test_rank_split_invariants(num_rows, per_rank, world_size, drop_last):
    batch_size = per_rank * world_size
    if not drop_last and num_rows < world_size:
        with pytest.raises(ValueError):
            rank_part(num_rows, batch_size, world_size, 0, drop_last)
        return
    parts = [rank_part(num_rows, batch_size, world_size, r, drop_last) for r in range(world_size)]
    counts = {p.num_batches for p in parts}
    assert len(counts) == 1, f"unequal batch counts across ranks: {counts}"
    seen = []
    for k in range(parts[0].num_batches):
        bounds = [p.batch_bounds(k) for p in parts]
        assert bounds[0][0] == k * batch_size, "Incorrect sample order: global batch k does not start at k * B"
        for (lo, hi), (next_lo, _) in zip(bounds, bounds[1:]):
            assert hi == next_lo, "the ranks' slices of a global batch are not contiguous"
        sizes = [hi - lo for lo, hi in bounds]
        assert min(sizes) >= 1 and max(sizes) - min(sizes) <= 1 and max(sizes) <= per_rank
        if drop_last:
            assert sizes == [per_rank] * world_size
        seen += [p for lo, hi in bounds for p in range(lo, hi)]
    assert len(seen) == len(set(seen)), "Duplicate samples across ranks"
    assert seen == list(range(len(seen))), "Incorrect sample order"
    if drop_last:
        assert len(seen) == (num_rows // batch_size) * batch_size
    elif num_rows % batch_size == 0 or num_rows % batch_size >= world_size:
        assert len(seen) == num_rows, "Missing samples"
        assert parts[0].num_batches == -(-num_rows // batch_size)
    else:  # a last global batch with fewer rows than ranks is skipped
        assert len(seen) == num_rows - num_rows % batch_size


@settings(max_examples=200, deadline=None)
@given(num_batches=st.integers(0, 60), num_workers=st.integers(1, 7), start=st.integers(0, 60))
def test_worker_ranges_partition_batches_and_loader_skip_inverts_round_robin(num_batches, num_workers, start):
    ranges = [worker_batches(num_batches, num_workers, w) for w in range(num_workers)]
    assert [b for r in ranges for b in r] == list(range(num_batches))
    assert max(map(len, ranges)) - min(map(len, ranges)) <= 1
    whole = round_robin(ranges)
    start = min(start, num_batches)
    consumed = whole[:start]
    for w in range(num_workers):
        assert loader_skip(num_batches, num_workers, w, start) == sum(1 for cw, _ in consumed if cw == w)
    # A resumed loader (workers restart at 0) continues the uninterrupted order exactly.
    resumed = round_robin([resume_worker_batches(num_batches, num_workers, w, start) for w in range(num_workers)])
    assert [b for _, b in whole[:start]] + [b for _, b in resumed] == [b for _, b in whole]


def round_robin(ranges: list[range]) -> list[tuple[int, int]]:
    """What DataLoader does with an iterable dataset: one batch per live worker, in turn."""
    iterators = [iter(r) for r in ranges]
    order, live = [], list(range(len(ranges)))
    while live:
        for w in list(live):
            b = next(iterators[w], None)
            if b is None:
                live.remove(w)
            else:
                order.append((w, b))
    return order


def test_plan_validates_its_arguments():
    with pytest.raises(ValueError):
        epoch_plan(SIZES, 0, 0, window=0, shuffle=True)
    with pytest.raises(ValueError):
        rank_part(10, 0, 1, 0, False)
    with pytest.raises(ValueError):
        rank_part(10, 2, 2, 2, False)
    with pytest.raises(ValueError):
        rank_part(1, 2, 2, 0, False)  # fewer rows than ranks


def test_negative_and_huge_seeds_are_accepted_and_distinct():
    a = epoch_rows(SIZES, seed=-1, epoch=0, window=3)
    b = epoch_rows(SIZES, seed=2**70 + 5, epoch=0, window=3)
    assert sorted(a.tolist()) == sorted(b.tolist()) == list(range(117))
    assert not np.array_equal(a, b)
