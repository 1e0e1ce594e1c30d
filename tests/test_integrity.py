"""Integrity on every read path: Parquet page checksums (a flipped bit is an error,
even under `train --no-verify`, or reads the original values), duplicates in a
manifest, duplicate ids, and `verify --drop-bad`'s safety (symlinks, kill points)."""

import json
import os
import random
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import run_cli
from transferset.errors import UserError

TRAIN = ["--student-arg", "hidden=8", "--epochs", "3", "--optimizer", "adamw", "--lr", "0.01", "--quiet"]
BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "50", "--shard-rows", "128"]


@pytest.fixture(scope="module")
def transfer_set(tmp_path_factory):
    """A 5-shard set (517 rows) and a student trained on it, made once for the module."""
    import numpy as np

    from conftest import write_pixels_source

    root = tmp_path_factory.mktemp("integrity")
    rng = np.random.default_rng(0)
    lab = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, size=(517, 64), dtype=np.uint8),
                              rng.integers(0, 10, size=517).tolist(), row_group_size=97)
    out = root / "ts"
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", lab, *BASE, "--out", out, "--quiet", check=True)
    run_cli("train", "--transfer", out, *TRAIN, "--out", root / "run", check=True)
    return out


def _copy(transfer_set, tmp_path):
    copy = tmp_path / "ts"
    shutil.copytree(transfer_set, copy)
    return copy


def _logits_region(path) -> list[int]:
    """Byte offsets of the `logits` column chunks of every row group (pages and headers)."""
    meta = pq.ParquetFile(path).metadata
    offsets = []
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            chunk = meta.row_group(g).column(c)
            if chunk.path_in_schema.startswith("logits"):
                offsets += range(chunk.data_page_offset, chunk.data_page_offset + chunk.total_compressed_size)
    return offsets


def _stream_everything(directory):
    """What train, train --eval and eval read: every batch through StreamSource."""
    from train.stream import StreamSource

    source = StreamSource.open_transfer_set(directory)
    return [(b.inputs, b.labels, b.target_logits) for b in source.epoch(batch_size=1000, seed=0, epoch=0, shuffle=False)]


def _same(a, b) -> bool:
    import torch

    return len(a) == len(b) and all(torch.equal(x, y) for pa_, pb in zip(a, b) for x, y in zip(pa_, pb))


def test_shards_carry_page_checksums_and_plain_float16(transfer_set, tmp_path):
    shard = transfer_set / "part-00000.parquet"
    meta = pq.ParquetFile(shard).metadata
    for c in range(meta.num_columns):
        chunk = meta.row_group(0).column(c)
        if chunk.path_in_schema.startswith("logits"):
            assert "BYTE_STREAM_SPLIT" not in chunk.encodings  # float16: DuckDB cannot read it
    region = _logits_region(shard)
    data = bytearray(shard.read_bytes())
    data[region[len(region) // 4]] ^= 0x10  # inside the first page's body
    flipped = tmp_path / "flipped.parquet"
    flipped.write_bytes(bytes(data))
    pq.ParquetFile(flipped).read()  # unverified, the flip decodes silently: what the CRC is for
    with pytest.raises(OSError, match="CRC checksum verification failed"):
        pq.ParquetFile(flipped, page_checksum_verification=True).read()


def test_a_flipped_bit_in_the_logits_is_an_error_or_harmless_on_every_read_path(transfer_set, tmp_path):
    from transferset.inspect import summarize

    directory = _copy(transfer_set, tmp_path)
    original = _stream_everything(directory)
    summary = summarize(str(directory))
    shard = directory / "part-00001.parquet"
    pristine = shard.read_bytes()
    positions = random.Random(0).sample(_logits_region(shard), 200)
    outcomes = {"error": 0, "identical": 0}
    for pos in positions:
        data = bytearray(pristine)
        data[pos] ^= 1 << (pos % 8)
        shard.write_bytes(bytes(data))
        for read, expected, same in ((_stream_everything, original, _same), (summarize, summary, lambda a, b: a == b)):
            try:
                values = read(directory if read is _stream_everything else str(directory))
            except UserError as error:  # one line, naming the shard
                assert "\n" not in str(error) and "part-00001.parquet" in str(error), (pos, str(error))
                outcomes["error"] += 1
                continue
            assert same(values, expected), f"a flip at byte {pos} was read as different values"
            outcomes["identical"] += 1
    assert outcomes["error"] > 300  # nearly every flip is caught (a few hit unused header bytes)
    shard.write_bytes(pristine)


def test_a_flipped_bit_is_refused_by_each_command_even_without_verify(transfer_set, tmp_path):
    directory = _copy(transfer_set, tmp_path)
    shard = directory / "part-00002.parquet"
    region = _logits_region(shard)
    data = bytearray(shard.read_bytes())
    middle = region[len(region) // 2]  # inside the first row group's page body
    data[middle] ^= 0x04
    shard.write_bytes(bytes(data))
    run = transfer_set.parent / "run"
    train = ["train", *TRAIN]
    for args in (
        [*train, "--transfer", directory, "--no-verify", "--out", tmp_path / "r1"],
        [*train, "--transfer", transfer_set, "--eval", directory, "--out", tmp_path / "r2"],
        ["eval", run, "--data", directory],
        ["inspect", directory],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 2, (args[0], proc.stderr)
        assert "part-00002.parquet" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_sets_written_without_page_checksums_still_read(tmp_path):
    from pathlib import Path

    v1 = Path(__file__).parent / "fixtures" / "v1-dense-set"
    assert run_cli("inspect", v1).returncode == 0
    assert sum(len(labels) for _, labels, _ in _stream_everything(v1)) == 61  # what train and eval read


def _edit_manifest(directory, change):
    path = directory / "_manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_a_shard_listed_twice_or_copied_is_refused_by_verify_and_train(transfer_set, tmp_path):
    twice = _copy(transfer_set, tmp_path / "a")
    _edit_manifest(twice, lambda m: m["shards"].append(m["shards"][0]))
    copied = _copy(transfer_set, tmp_path / "b")
    shutil.copy(copied / "part-00000.parquet", copied / "part-00009.parquet")
    _edit_manifest(copied, lambda m: m["shards"].append({**m["shards"][0], "path": "part-00009.parquet", "index": 9}))
    for directory, what in ((twice, "same name"), (copied, "same SHA-256")):
        for args in (["verify", directory], ["train", "--transfer", directory, "--epochs", "1", "--out", tmp_path / "r"]):
            proc = run_cli(*args)
            assert proc.returncode == 2 and what in proc.stderr and "a shard listed twice or copied" in proc.stderr, proc.stderr
            assert not (tmp_path / "r").exists()


def test_rows_that_do_not_add_up_to_the_sources_are_refused(transfer_set, tmp_path):
    directory = _copy(transfer_set, tmp_path)
    _edit_manifest(directory, lambda m: m["shards"].pop())
    proc = run_cli("verify", directory)
    assert proc.returncode == 2 and "the shards hold 512 rows but the sources have 517" in proc.stderr


def test_verify_catches_a_row_id_written_twice(transfer_set, tmp_path):
    """A shard rewritten with a row of another shard (intact checksums, unique names and
    hashes, the right row total): only the id check finds it."""
    import pyarrow as pa

    from transferset.io import file_sha256

    directory = _copy(transfer_set, tmp_path)
    repeated = pq.read_table(directory / "part-00000.parquet").column("id")[5].as_py()
    shard = directory / "part-00001.parquet"
    pf = pq.ParquetFile(shard)
    table = pf.read()
    ids = table.column("id").to_pylist()
    ids[7] = repeated
    table = table.set_column(table.schema.get_field_index("id"), table.schema.field("id"), pa.array(ids, pa.string()))
    pq.write_table(table, shard, row_group_size=pf.metadata.row_group(0).num_rows)

    def restamp(m):
        m["shards"][1].update(bytes=shard.stat().st_size, sha256=file_sha256(shard))
    _edit_manifest(directory, restamp)
    proc = run_cli("verify", directory)
    assert proc.returncode == 2 and f"row id {repeated!r} occurs 2 times" in proc.stderr, proc.stderr


def test_drop_bad_refuses_symlinked_bookkeeping(transfer_set, tmp_path):
    other = _copy(transfer_set, tmp_path / "other")
    victim = _copy(transfer_set, tmp_path / "victim")
    shutil.rmtree(victim / "_shards")
    os.symlink(other / "_shards", victim / "_shards")
    data = bytearray((victim / "part-00001.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (victim / "part-00001.parquet").write_bytes(bytes(data))
    proc = run_cli("verify", victim, "--drop-bad")
    assert proc.returncode == 2 and "is a symlink" in proc.stderr, proc.stderr
    assert sorted(p.name for p in (other / "_shards").iterdir()) == [f"part-0000{i}.json" for i in range(5)]
    assert (victim / "_manifest.json").exists() and (victim / "part-00001.parquet").exists()


@pytest.mark.parametrize("steps_done", [0, 1, 2, 3, 4])  # record, card, manifest, shard
def test_every_kill_point_of_drop_bad_is_recovered_by_rerunning(transfer_set, tmp_path, steps_done, monkeypatch):
    """drop_bad's deletions, cut after each step (as a kill would): rerunning verify --drop-bad
    (or generate, once the manifest is gone) always repairs the set, never loops."""
    from pathlib import Path

    from transferset.format import verify as verify_module

    directory = _copy(transfer_set, tmp_path)
    data = bytearray((directory / "part-00003.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (directory / "part-00003.parquet").write_bytes(bytes(data))
    manifest, problems = verify_module.verify(directory)
    done = []
    real_unlink = Path.unlink

    def unlink(self, missing_ok=False):
        if len(done) == steps_done:
            raise KeyboardInterrupt  # the kill
        done.append(self.name)
        real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", unlink)
    with pytest.raises(KeyboardInterrupt) if steps_done < 4 else _nothing():
        verify_module.drop_bad(manifest, problems)
    monkeypatch.setattr(Path, "unlink", real_unlink)
    lab = transfer_set.parent / "lab.parquet"
    generate = ["generate", "--teacher", "teacher_models:tiny_a", "--source", lab, *BASE, "--out", directory, "--quiet"]
    first = run_cli(*generate)  # what a user tries first; it must not send them in a circle
    assert first.returncode == 0 or "--drop-bad" in first.stderr, first.stderr
    for _ in range(3):  # the message's next command, followed; at most a few rounds
        proc = run_cli("verify", directory, "--drop-bad")
        if proc.returncode == 0:
            break
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "rerun" in proc.stderr and "generate" in proc.stderr, proc.stderr
        run_cli(*generate, check=True)
    assert run_cli("verify", directory).returncode == 0
    assert (directory / "part-00003.parquet").read_bytes() == (transfer_set / "part-00003.parquet").read_bytes()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
