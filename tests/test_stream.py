"""train/stream.py: batches from tiny, odd-sized transfer sets and labelled Parquet files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from helpers_transferset import make_transfer_set, write_labelled  # tests/ is on sys.path (conftest.py)

from train import order
from train.batch import Batch
from train.stream import StreamSource
from train.workers import StreamDataset
from train.world import World
from transferset.errors import UserError
from transferset.inputs import InputSpec
from transferset.io import expand_parquet_paths

# 117 rows in two shards, row groups of 10 with short ones, windows of 3 row groups.
SHARDS = [[10, 10, 10, 10, 10, 7], [10, 10, 10, 10, 10, 10]]
WINDOW_ROWS = 30


@pytest.fixture(scope="module")
def tset(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tset") / "set"
    rows = make_transfer_set(directory, SHARDS, num_classes=3, features=2)
    return directory, rows


@pytest.fixture()
def source(tset):
    return StreamSource.open_transfer_set(tset[0], window_rows=WINDOW_ROWS)


def world(rank: int, world_size: int) -> World:
    """Rank `rank` of `world_size` processes (the stream only reads rank and world size)."""
    return World(rank=rank, world_size=world_size, local_rank=0, device=torch.device("cpu"))


def ids(batches) -> list[str]:
    return [i for b in batches for i in b.extra["id"]]


def run(source, **kw) -> list[Batch]:
    kw.setdefault("batch_size", 8)
    kw.setdefault("seed", 11)
    kw.setdefault("epoch", 0)
    return list(source.epoch(columns_extra=("id",), **kw))


def assert_same_batches(got: list[Batch], want: list[Batch]) -> None:
    assert len(got) == len(want), f"{len(got)} batches, expected {len(want)}"
    for k, (g, w) in enumerate(zip(got, want)):
        assert g.extra["id"] == w.extra["id"], f"Incorrect sample order in batch {k}"
        assert torch.equal(g.inputs, w.inputs) and torch.equal(g.labels, w.labels), f"batch {k} differs"
        assert (g.target_logits is None) == (w.target_logits is None)
        if g.target_logits is not None:
            assert torch.equal(g.target_logits, w.target_logits), f"batch {k} targets differ"


# -- one epoch --------------------------------------------------------------


def test_metadata(source, tset):
    _, rows = tset
    assert (source.num_rows, source.num_classes, source.has_targets) == (117, 3, True)
    assert source.num_labelled == int((rows.labels >= 0).sum())
    assert source.temperature == 2.0 and source.combine == "arithmetic"
    assert source.provenance.format == "transferset"
    assert source.input_spec.columns == ("x",)


def test_every_row_exactly_once_with_its_own_values(source, tset):
    _, rows = tset
    batches = run(source)
    seen = ids(batches)
    assert len(seen) == len(set(seen)), "Duplicate samples"
    assert sorted(seen) == sorted(rows.ids), "Missing samples"
    assert [len(b) for b in batches] == [8] * 14 + [5]
    for b in batches:
        r = [rows.row(i) for i in b.extra["id"]]
        assert b.inputs.dtype == torch.float32 and b.inputs.shape == (len(r), 2)
        assert torch.equal(b.inputs, torch.from_numpy(rows.inputs[r]))
        assert b.labels.dtype == torch.int64 and torch.equal(b.labels, torch.from_numpy(rows.labels[r]))
        assert b.target_logits.dtype == torch.float32
        assert torch.equal(b.target_logits, torch.from_numpy(rows.logits[r].astype(np.float32)))
    assert (torch.cat([b.labels for b in batches]) == -1).sum() == 117 - source.num_labelled


def test_deterministic_per_seed_and_epoch(source):
    first = run(source, seed=5, epoch=2)
    assert_same_batches(run(source, seed=5, epoch=2), first)
    assert ids(run(source, seed=5, epoch=3)) != ids(first)
    assert ids(run(source, seed=6, epoch=2)) != ids(first)


def test_no_shuffle_reads_in_file_order(source, tset):
    assert ids(run(source, shuffle=False)) == tset[1].ids


def test_batches_straddle_windows_without_losing_rows(source):
    # batch 7 never divides the 30-row windows: most windows end mid-batch.
    batches = run(source, batch_size=7)
    assert [len(b) for b in batches] == [7] * 16 + [5]
    assert sorted(ids(batches)) == sorted(f"r{i}" for i in range(117))


def test_drop_last(source):
    batches = run(source, batch_size=10, drop_last=True)
    assert [len(b) for b in batches] == [10] * 11
    assert source.num_batches(10, drop_last=True) == 11
    with pytest.raises(UserError, match="no full batch"):
        run(source, batch_size=200, drop_last=True)


# -- resume -----------------------------------------------------------------


@pytest.mark.parametrize("k", [0, 1, 4, 7, 14, 15])
def test_resume_matches_the_uninterrupted_epoch_bit_for_bit(source, k):
    whole = run(source, batch_size=8)
    resumed = run(source, batch_size=8, start_batch=k)
    assert_same_batches(whole[:k] + resumed, whole)


def test_resume_reads_no_window_before_the_resume_point(source, monkeypatch):
    loaded = []
    real_load = StreamSource._load

    def spy(self, window, extra):
        loaded.append(window.index)
        return real_load(self, window, extra)

    monkeypatch.setattr(StreamSource, "_load", spy)
    run(source, batch_size=8)
    assert loaded == [0, 1, 2, 3]  # 12 row groups / 3 per window
    loaded.clear()
    run(source, batch_size=8, start_batch=13)  # positions 104.. lie in the last window (90..116)
    assert loaded == [3]


def test_a_set_that_fits_one_window_is_read_once(tset, monkeypatch):
    loads = []
    real_load = StreamSource._load
    monkeypatch.setattr(StreamSource, "_load", lambda self, w, extra: loads.append(w.index) or real_load(self, w, extra))
    kept = StreamSource.open_transfer_set(tset[0])  # the default budget holds all 117 rows
    epochs = [run(kept, epoch=e) for e in range(3)]
    assert loads == [0], "the one window was read more than once"
    for e, batches in enumerate(epochs):  # same batches as a fresh reader of that epoch
        assert_same_batches(batches, run(StreamSource.open_transfer_set(tset[0]), epoch=e))
    list(kept.epoch(batch_size=8, seed=11, epoch=0))  # other columns: read again
    assert len(loads) == 5


def test_resume_position_outside_the_epoch_is_refused(source):
    with pytest.raises(UserError, match="resume position 16"):
        run(source, batch_size=8, start_batch=16)


# -- ranks and workers ------------------------------------------------------


@pytest.mark.parametrize("world_size,batch_size", [(2, 8), (3, 6), (4, 28), (2, 2)])
def test_ranks_read_disjoint_parts_with_equal_batch_counts(source, world_size, batch_size):
    per_rank = [run(source, batch_size=batch_size, world=world(r, world_size)) for r in range(world_size)]
    counts = {len(b) for b in per_rank}
    assert counts == {source.num_batches(batch_size, world(0, world_size))}, "ranks yield different batch counts"
    seen = [i for batches in per_rank for i in ids(batches)]
    assert len(seen) == len(set(seen)), "Duplicate samples across ranks"
    tail = 117 % batch_size
    assert len(seen) == 117 - (tail if tail < world_size else 0), "Missing samples"  # a tail shorter than the world is skipped


def test_ranks_together_yield_the_single_process_batches(source):
    """Global batch k on 2 or 3 ranks is single-process batch k, sliced: the same rows in
    the same order, so DDP computes the gradient of the same rows."""
    single = run(source, batch_size=12)
    for world_size in (2, 3):
        per_rank = [run(source, batch_size=12, world=world(r, world_size)) for r in range(world_size)]
        for k, whole in enumerate(single):
            slices = [batches[k] for batches in per_rank]
            assert [i for b in slices for i in b.extra["id"]] == whole.extra["id"], f"global batch {k} differs on {world_size} ranks"
            assert {b.global_rows for b in slices} == {len(whole)}


def test_resume_on_another_world_size_sees_each_remaining_row_once(source):
    """A checkpoint after 4 global batches on 3 ranks, resumed on 2: together they see
    every row once, in the single-process order."""
    before = [i for r in range(3) for b in run(source, batch_size=12, world=world(r, 3))[:4] for i in b.extra["id"]]
    after = [run(source, batch_size=12, world=world(r, 2), start_batch=4) for r in range(2)]
    after = [i for k in range(len(after[0])) for batches in after for i in batches[k].extra["id"]]
    seen = before + after
    assert len(seen) == len(set(seen)), "Duplicate samples"
    assert sorted(seen) == sorted(ids(run(source, batch_size=12))), "Missing samples"
    assert after == ids(run(source, batch_size=12))[48:], "Incorrect sample order"


def test_a_global_batch_the_ranks_do_not_divide_is_a_one_line_error(source):
    with pytest.raises(UserError, match="--batch-size 10 is the global batch and must be divisible by the 3 processes"):
        run(source, batch_size=10, world=world(0, 3))


def test_rank_resume(source):
    whole = run(source, batch_size=6, world=world(1, 3))
    assert_same_batches(whole[:3] + run(source, batch_size=6, world=world(1, 3), start_batch=3), whole)


def loader(source, num_workers, **kw):
    dataset = StreamDataset(source, batch_size=kw.pop("batch_size", 8), seed=11, epoch=0, columns_extra=("id",), **kw)
    return list(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=num_workers))


def test_dataset_without_workers_is_the_epoch(source):
    assert_same_batches(loader(source, 0), run(source))
    assert len(StreamDataset(source, batch_size=8, seed=11, epoch=0, start_batch=4)) == 11


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("num_workers", [2, 3])
def test_workers_cover_every_row_once_and_resume(source, num_workers):
    whole = loader(source, num_workers)
    seen = ids(whole)
    assert len(seen) == len(set(seen)) == 117, "Missing or duplicate samples across workers"
    assert len(whole) == source.num_batches(8)
    k = 5
    assert_same_batches(whole[:k] + loader(source, num_workers, start_batch=k), whole)


def test_workers_with_ranks(source):
    seen = [i for r in range(2) for i in ids(loader(source, 2, world=world(r, 2)))]
    assert sorted(seen) == sorted(f"r{i}" for i in range(117))


# -- data kinds -------------------------------------------------------------


def test_float32_storage_and_transform_inputs(tmp_path, monkeypatch):
    rows = make_transfer_set(tmp_path / "f32", [[13, 4], [9]], storage_dtype="float32", num_classes=4, features=3)
    src = StreamSource.open_transfer_set(tmp_path / "f32", window_rows=10)
    batches = run(src, batch_size=4)
    for b in batches:
        r = [rows.row(i) for i in b.extra["id"]]
        assert torch.equal(b.target_logits, torch.from_numpy(rows.logits[r]))
    # Inputs through a user transform (called on the gathered Arrow rows of each batch).
    (tmp_path / "xform.py").write_text(
        "import numpy as np\n"
        "def double(batch):\n"
        "    return np.stack(batch.column('x').to_numpy(zero_copy_only=False)) * 2\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    src.input_spec = InputSpec(columns=("x",), transform="xform:double")
    for b in run(src, batch_size=4):
        r = [rows.row(i) for i in b.extra["id"]]
        assert torch.equal(b.inputs, torch.from_numpy(rows.inputs[r] * 2))


def test_extra_columns(source):
    b = run(source, batch_size=8)[0]
    assert isinstance(b.extra["id"], list) and len(b.extra["id"]) == 8
    [b] = list(source.epoch(batch_size=117, seed=0, epoch=0, columns_extra=("x", "label", "source")))
    assert torch.equal(b.extra["x"], b.inputs)  # a numeric fixed-size list: a tensor [B, 2]
    assert b.extra["label"][:3] == [b.labels[i].item() if b.labels[i] >= 0 else None for i in range(3)]  # nulls: a list
    assert b.extra["source"] == ["fixture"] * 117
    with pytest.raises(UserError, match="nope"):
        list(source.epoch(batch_size=8, seed=0, epoch=0, columns_extra=("nope",)))


def test_batch_to_and_pin_memory(source):
    b = run(source)[0]
    moved = b.to("cpu", non_blocking=True)
    assert torch.equal(moved.inputs, b.inputs) and moved.extra["id"] == b.extra["id"]
    pinned = b.pin_memory()
    if torch.cuda.is_available():
        assert pinned.inputs.is_pinned() and pinned.target_logits.is_pinned()
        on_gpu = pinned.to("cuda", non_blocking=True)
        assert on_gpu.inputs.is_cuda and torch.equal(on_gpu.labels.cpu(), b.labels)
    else:
        assert pinned is b


def test_reads_one_row_group_at_a_time(source, monkeypatch):
    # Memory follows the window only if nothing reads whole files.
    def refuse(*a, **k):
        raise AssertionError("whole-file read")

    iter_batches = pq.ParquetFile.iter_batches

    def one_row_group(self, *args, row_groups=None, **kwargs):
        if row_groups is None or len(row_groups) != 1:
            raise AssertionError(f"iter_batches over row groups {row_groups}, not one")
        return iter_batches(self, *args, row_groups=row_groups, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", refuse)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", one_row_group)
    monkeypatch.setattr(pq, "read_table", refuse)
    assert len(ids(run(source))) == 117


def test_a_row_group_is_decoded_in_parts(source, monkeypatch):
    # Parts of PART_BYTES keep the transient decode small; the batches do not change.
    import train.window

    whole = [(b.inputs, b.labels, b.target_logits) for b in run(source)]
    monkeypatch.setattr(train.window, "PART_BYTES", 1)
    monkeypatch.setattr(train.window, "PART_MIN_ROWS", 3)  # row groups of 10 rows in parts of 3, 3, 3, 1
    parts = [(b.inputs, b.labels, b.target_logits) for b in run(source)]
    assert len(whole) == len(parts) and all(all(torch.equal(x, y) for x, y in zip(a, b)) for a, b in zip(whole, parts))


# -- labelled Parquet -------------------------------------------------------

SPEC = InputSpec(columns=("x",), shape=(2,))


def test_labelled_files_dirs_and_globs(tmp_path):
    write_labelled(tmp_path / "d" / "a.parquet", 0, 23)
    write_labelled(tmp_path / "d" / "sub" / "b.parquet", 23, 14)
    write_labelled(tmp_path / "d" / "_skip" / "c.parquet", 100, 5)  # _hidden: not data
    write_labelled(tmp_path / "e.parquet", 37, 6, write_statistics=False)
    given = [str(tmp_path / "d"), str(tmp_path / "e*.parquet"), str(tmp_path / "d" / "a.parquet")]
    assert expand_parquet_paths(given, "--data") == [str(tmp_path / p) for p in ("d/a.parquet", "d/sub/b.parquet", "e.parquet")]
    src = StreamSource.open_labelled(given, SPEC, "y")
    assert (src.num_rows, src.num_classes, src.has_targets, src.temperature) == (43, 4, False, None)
    batches = list(src.epoch(batch_size=6, seed=0, epoch=0, columns_extra=("id",)))
    assert sorted(ids(batches)) == sorted(f"r{i}" for i in range(43))
    for b in batches:
        r = np.array([int(i[1:]) for i in b.extra["id"]])
        assert b.target_logits is None
        assert torch.equal(b.labels, torch.from_numpy(r % 4))
        assert torch.equal(b.inputs[:, 0], torch.from_numpy(r.astype(np.float32)))


@pytest.mark.parametrize("write_statistics", [True, False])
def test_labelled_num_classes_from_data_and_range_check(tmp_path, write_statistics):
    path = tmp_path / "a.parquet"
    write_labelled(path, 0, 17, labels=np.array([0, 1, 6] + [2] * 14), write_statistics=write_statistics)
    assert StreamSource.open_labelled([str(path)], SPEC, "y").num_classes == 7
    with pytest.raises(UserError, match=r"a\.parquet: label 6 .* outside \[0, 5\)"):
        StreamSource.open_labelled([str(path)], SPEC, "y", num_classes=5)
    write_labelled(path, 0, 17, labels=np.array([0, -3] + [2] * 15), write_statistics=write_statistics)
    with pytest.raises(UserError, match=r"a\.parquet: label -3"):
        StreamSource.open_labelled([str(path)], SPEC, "y")


@pytest.mark.parametrize("label_type", [pa.int32(), pa.uint8()])
def test_labelled_null_labels_are_minus_one(tmp_path, label_type):
    labels = pa.array([0, None, 2, 1, None, 3, 0], type=label_type)
    write_labelled(tmp_path / "a.parquet", 0, 7, labels=labels, row_group_size=3)
    src = StreamSource.open_labelled([str(tmp_path / "a.parquet")], SPEC, "y")
    assert (src.num_labelled, src.num_classes) == (5, 4)
    [b] = list(src.epoch(batch_size=7, seed=0, epoch=0, shuffle=False))
    assert b.labels.tolist() == [0, -1, 2, 1, -1, 3, 0]


@pytest.mark.parametrize("label_type,values", [(pa.string(), ["0", "1"]), (pa.float32(), [0.0, 1.0]), (pa.bool_(), [True, False])])
def test_labelled_non_integer_labels_are_refused(tmp_path, label_type, values):
    write_labelled(tmp_path / "a.parquet", 0, 2, labels=pa.array(values, type=label_type))
    with pytest.raises(UserError, match=f"holds {label_type}, not integer"):
        StreamSource.open_labelled([str(tmp_path / "a.parquet")], SPEC, "y")


def test_labelled_path_and_column_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        StreamSource.open_labelled([str(tmp_path / "missing.parquet")], SPEC, "y")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(UserError, match="no .parquet files"):
        StreamSource.open_labelled([str(tmp_path / "empty_dir")], SPEC, "y")
    write_labelled(tmp_path / "a.parquet", 0, 4)
    with pytest.raises(UserError, match="no label column 'label'"):
        StreamSource.open_labelled([str(tmp_path / "a.parquet")], SPEC, "label")
    write_labelled(tmp_path / "empty.parquet", 0, 0)
    with pytest.raises(UserError, match="no rows"):
        StreamSource.open_labelled([str(tmp_path / "empty.parquet")], SPEC, "y")
    write_labelled(tmp_path / "zeros.parquet", 0, 3, labels=np.zeros(3, dtype=np.int64))
    with pytest.raises(UserError, match="--num-classes"):
        StreamSource.open_labelled([str(tmp_path / "zeros.parquet")], SPEC, "y")


# -- damaged data -----------------------------------------------------------


def test_truncated_shard_is_named(tmp_path):
    make_transfer_set(tmp_path / "s", [[10, 10], [10]])
    shard = tmp_path / "s" / "part-00001.parquet"
    shard.write_bytes(shard.read_bytes()[:-40])
    with pytest.raises(UserError, match=r"part-00001\.parquet cannot be read as Parquet .*damaged or truncated"):
        StreamSource.open_transfer_set(tmp_path / "s")


@pytest.mark.parametrize("window_rows", [None, 40])  # one kept window; read-ahead on a thread
def test_corrupt_data_pages_are_named(tmp_path, window_rows):
    make_transfer_set(tmp_path / "s", [[40, 40]], compression="zstd", features=16)
    shard = tmp_path / "s" / "part-00000.parquet"
    raw = bytearray(shard.read_bytes())
    size = len(raw)
    pages_end = size - 8 - int.from_bytes(raw[-8:-4], "little")  # the footer (length in the last 8 bytes) stays intact
    raw[100 : pages_end // 2] = bytes(pages_end // 2 - 100)  # zero the first half of the pages
    shard.write_bytes(bytes(raw))
    src = StreamSource.open_transfer_set(tmp_path / "s", window_rows=window_rows)
    with pytest.raises(UserError, match=r"part-00000\.parquet"):
        list(src.epoch(batch_size=8, seed=0, epoch=0))


def test_out_of_range_label_in_a_transfer_set_is_named(tmp_path):
    rows = make_transfer_set(tmp_path / "s", [[10, 7]], num_classes=3)
    shard = tmp_path / "s" / "part-00000.parquet"
    table = pq.read_table(shard)
    labels = table.column("label").to_numpy(zero_copy_only=False)
    labels = np.where(np.isnan(labels), -1, labels).astype(np.int64)
    labels[12] = 3
    table = table.set_column(2, table.schema.field("label"), pa.array(labels, mask=labels < 0, type=pa.int32()))
    pq.write_table(table, shard, row_group_size=10)
    src = StreamSource.open_transfer_set(tmp_path / "s")
    with pytest.raises(UserError, match=r"part-00000\.parquet: label 3 .* outside \[0, 3\)"):
        list(src.epoch(batch_size=8, seed=0, epoch=0))
    assert rows.labels[12] != 3


def test_nan_targets_are_refused(tmp_path):
    make_transfer_set(tmp_path / "s", [[6]], num_classes=2, storage_dtype="float32")
    shard = tmp_path / "s" / "part-00000.parquet"
    table = pq.read_table(shard)
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32)
    logits[4, 1] = np.nan
    table = table.set_column(3, "logits", pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), 2).cast(table.schema.field("logits").type))
    pq.write_table(table, shard)
    with pytest.raises(UserError, match="NaN"):
        list(StreamSource.open_transfer_set(tmp_path / "s").epoch(batch_size=8, seed=0, epoch=0))


def test_manifest_row_count_mismatch_is_named(tmp_path):
    make_transfer_set(tmp_path / "s", [[10]])
    shard = tmp_path / "s" / "part-00000.parquet"
    pq.write_table(pq.read_table(shard).slice(0, 9), shard)
    with pytest.raises(UserError, match=r"part-00000\.parquet has 9 rows but manifest.json says 10"):
        StreamSource.open_transfer_set(tmp_path / "s")


def test_argument_errors(source):
    with pytest.raises(UserError, match="batch size 0"):
        source.num_batches(0)
    with pytest.raises(UserError, match="rank 2 is outside world size 2"):
        run(source, world=world(2, 2))
    with pytest.raises(UserError, match="117 rows cannot be split over 200 ranks"):
        run(source, world=world(0, 200))


def test_window_by_bytes(tset):
    # A row in a window: int64 label + 3 float32 targets + 2 float32 inputs = 28 bytes.
    group = 10 * 28
    assert StreamSource.open_transfer_set(tset[0], window_bytes=3 * group).window_row_groups == 3
    assert StreamSource.open_transfer_set(tset[0], window_bytes=3 * group - 1).window_row_groups == 2
    assert StreamSource.open_transfer_set(tset[0], window_bytes=1).window_row_groups == 1  # never less than one row group
    assert StreamSource.open_transfer_set(tset[0]).window_row_groups >= 12  # the default budget holds this whole set


def test_uint8_inputs_are_kept_as_stored_and_scaled_per_batch_to_the_same_values(tmp_path):
    """A window holds uint8 pixels as uint8 (a quarter of float32's bytes) and each batch
    is converted with the InputSpec's own float32 operations: the very values to_tensor gives."""
    import pyarrow.dataset as pads

    from test_train_cli import build_transfer_set

    directory = build_transfer_set(tmp_path / "ts", rows=57)
    source = StreamSource.open_transfer_set(directory)
    assert source.input_spec.scale != 1.0  # the conversion does something
    kept = source._load(order.epoch_plan([g.rows for g in source._row_groups], 0, 0, 100, False)[0], ())
    assert kept.inputs.dtype == torch.uint8
    table = pads.dataset(str(directory), format="parquet", exclude_invalid_files=True).to_table()
    by_id = {i: k for k, i in enumerate(table.column("id").to_pylist())}
    for batch in source.epoch(batch_size=16, seed=3, epoch=0, columns_extra=("id",)):
        rows = table.take([by_id[i] for i in batch.extra["id"]])
        assert batch.inputs.dtype == torch.float32
        assert torch.equal(batch.inputs, source.input_spec.to_tensor(rows))
