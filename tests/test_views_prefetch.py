"""A views set's batches are made on a background thread (transferset/prefetch.py), a few ahead of the step:
the same batches in the same order as without it, exact mid-epoch resume (stream and trainer),
the producer's errors raised again as the same one-line error, and no thread left behind."""

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from conftest import run_in_process

from transferset.prefetch import prefetched
from train.stream import PREFETCH_BATCHES, StreamSource
from transferset.errors import UserError

ROWS = 37  # odd: the last batch is short and windows end mid-batch
AUGMENT = "shift(1),hflip,color-jitter(brightness=0.3,contrast=0.3)"


@pytest.fixture(scope="module")
def views_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefetch")
    rng = np.random.default_rng(0)
    np.save(root / "x.npy", rng.integers(0, 256, (ROWS, 64), dtype=np.uint8))
    assert run_in_process("convert", "--images", root / "x.npy", "--out", root / "x.parquet", "-q").returncode == 0
    run_in_process("generate", "--teacher", "teacher_models:tiny_a", "--source", root / "x.parquet", "--input-column", "pixels",
                   "--input-shape", "1,8,8", "--input-scale", "1/255", "--views", "4", "--augment", AUGMENT,
                   "--row-group-rows", "6", "--batch-size", "8", "--out", root / "set", "-q", check=True)
    return root


def _same(a, b) -> bool:
    return (torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels) and a.extra["id"] == b.extra["id"]
            and a.targets.keys() == b.targets.keys() and all(torch.equal(a.targets[k], b.targets[k]) for k in a.targets))


@pytest.mark.parametrize("window_rows", [None, 12])  # the whole set in one kept window; windows of 2 row groups
def test_prefetched_batches_and_resume_equal_the_plain_stream(views_set, window_rows):
    source = StreamSource.open_transfer_set(views_set / "set", window_rows=window_rows)
    assert source.prefetch == PREFETCH_BATCHES > 0  # on by default for a views set
    args = dict(batch_size=5, seed=7, columns_extra=("id",))
    for epoch in (0, 5):
        plain = list(source.epoch(epoch=epoch, prefetch=0, **args))
        assert len(plain) == 8 and sum(len(b) for b in plain) == ROWS
        assert all(_same(a, b) for a, b in zip(list(source.epoch(epoch=epoch, **args)), plain, strict=True))
        for k in (1, 3, 7):  # resumed after k batches, prefetching: the uninterrupted run's batches after k
            resumed = list(source.epoch(epoch=epoch, start_batch=k, **args))
            assert len(resumed) == len(plain) - k and all(_same(a, b) for a, b in zip(resumed, plain[k:]))


def test_the_replay_runs_on_the_producer_thread(views_set, monkeypatch):
    from train.views import ViewReplay

    threads = []
    pick = ViewReplay.pick

    def spy(self, *args, **kwargs):
        threads.append(threading.current_thread().name)
        return pick(self, *args, **kwargs)

    monkeypatch.setattr(ViewReplay, "pick", spy)
    source = StreamSource.open_transfer_set(views_set / "set")
    list(source.epoch(batch_size=5, seed=0, epoch=0))
    assert threads and set(threads) == {"transferset-prefetch"}
    threads.clear()
    list(source.epoch(batch_size=5, seed=0, epoch=0, prefetch=0))
    assert set(threads) == {threading.current_thread().name}


def _producers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "transferset-prefetch"]


def test_a_consumer_that_stops_early_leaves_no_thread(views_set):
    source = StreamSource.open_transfer_set(views_set / "set", window_rows=12)
    batches = source.epoch(batch_size=5, seed=0, epoch=0)
    next(batches)
    assert len(_producers()) == 1
    batches.close()  # what a `break` or an exception in the training step does
    assert _producers() == []
    items = prefetched(lambda: iter(range(100)), 2)  # a producer blocked on a full queue stops too
    assert next(items) == 0
    del items
    assert _producers() == []


def test_a_damaged_row_group_is_the_same_one_line_error(views_set, tmp_path):
    import shutil

    damaged = shutil.copytree(views_set / "set", tmp_path / "set")
    shard = damaged / "part-00000.parquet"
    meta = pq.ParquetFile(shard).metadata
    group = meta.row_group(meta.num_row_groups - 1)
    chunk = next(group.column(i) for i in range(group.num_columns) if group.column(i).path_in_schema.startswith("logits"))
    data = bytearray(shard.read_bytes())
    data[chunk.data_page_offset + chunk.total_compressed_size // 2] ^= 0x04  # only the page checksum can tell
    shard.write_bytes(bytes(data))
    source = StreamSource.open_transfer_set(damaged, window_rows=12)
    seen = {}
    for depth in (0, 2):
        got = []
        with pytest.raises(UserError) as caught:
            for batch in source.epoch(batch_size=5, seed=0, epoch=0, prefetch=depth):
                got.append(batch)
        seen[depth] = (len(got), str(caught.value))
    assert seen[0] == seen[2] and seen[2][0] > 0 and "cannot be read" in seen[2][1] and "\n" not in seen[2][1]  # mid-epoch
    assert _producers() == []
    proc = run_in_process("train", "--transfer", damaged, "--no-verify", "--student", "train.students:mlp", "--epochs", "1",
                          "--batch-size", "5", "--out", tmp_path / "run", "-q")
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and seen[2][1] in lines[0], proc.stderr


def test_training_resumed_mid_epoch_with_prefetch_is_bit_identical(views_set, tmp_path):
    from train import checkpoint as ckpt

    args = ["train", "--transfer", str(views_set / "set"), "--student", "train.students:mlp", "--epochs", "2",
            "--batch-size", "5", "--seed", "3", "--lr", "0.1", "--checkpoint-every", "3", "--keep-checkpoints", "100", "-q"]
    assert run_in_process(*args, "--out", tmp_path / "full").returncode == 0
    checkpoint = ckpt.checkpoint_path(tmp_path / "full" / "checkpoints", 3)  # after 3 of epoch 0's 8 batches
    assert ckpt.load_checkpoint(checkpoint)["position"]["batch_in_epoch"] == 3
    assert run_in_process(*args, "--resume", checkpoint, "--out", tmp_path / "resumed").returncode == 0
    want = torch.load(tmp_path / "full" / "student.pt", weights_only=True)
    got = torch.load(tmp_path / "resumed" / "student.pt", weights_only=True)
    assert want.keys() == got.keys() and all(torch.equal(got[k], want[k]) for k in want)
