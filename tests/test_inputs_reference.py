"""`generate --inputs reference`: sets that name their source rows instead of copying the
inputs, and every reader that joins the sources back (train, eval, verify, inspect, the
card's recipe, recombine). The reference set must train exactly like the copy set."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cli, run_in_process, write_pixels_source
from train.stream import StreamSource
from transferset.format.manifest import read_manifest
from transferset.format.references import SOURCE_ROW, SourceJoin

BASE = ["--teacher", "teacher_models:tiny_a", "--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16",
        "--batch-size", "50", "--shard-rows", "128", "--row-group-rows", "40", "--quiet"]


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """Copy and reference sets over two sources whose row groups (97, 64) do not align with the set's (40)."""
    root = tmp_path_factory.mktemp("reference")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 517).tolist()
    labels[::7] = [None] * len(labels[::7])
    lab = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, (517, 64), dtype=np.uint8), labels, row_group_size=97)
    unl = write_pixels_source(root / "unl.parquet", rng.integers(0, 16, (203, 64), dtype=np.uint8), row_group_size=64)
    for mode in ("copy", "reference"):
        run_in_process("generate", *BASE, "--source", lab, "--source", unl, "--inputs", mode, "--out", root / mode, check=True)
    return root


def _column_bytes(directory, leaf: str) -> int:
    """Compressed bytes of one column over every shard of a set."""
    total = 0
    for path in sorted(directory.glob("part-*.parquet")):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            total += sum(meta.row_group(g).column(i).total_compressed_size for i in range(meta.num_columns)
                         if meta.row_group(g).column(i).path_in_schema == leaf)
    return total


def _batches(directory, **kwargs):
    source = StreamSource.open_transfer_set(directory, window_rows=100)  # several windows: joins cut across row groups
    out = []
    for epoch in range(2):
        out += [(b.inputs, b.labels, b.targets) for b in source.epoch(batch_size=33, seed=5, epoch=epoch, **kwargs)]
    return out


def test_the_shards_hold_source_rows_not_inputs(made):
    schema = pq.read_schema(made / "reference" / "part-00000.parquet")
    assert "pixels" not in schema.names and schema.field(SOURCE_ROW).type == pa.int64()
    meta = pq.ParquetFile(made / "reference" / "part-00000.parquet").metadata
    chunk = next(meta.row_group(0).column(i) for i in range(meta.num_columns) if meta.row_group(0).column(i).path_in_schema == SOURCE_ROW)
    assert "DELTA_BINARY_PACKED" in chunk.encodings
    copy, reference = read_manifest(made / "copy"), read_manifest(made / "reference")
    assert reference.provenance.inputs == "reference" and copy.provenance.inputs is None
    assert "inputs" not in copy.provenance.encode()  # a copy set's provenance (and resume key) is as before
    assert copy.provenance.config_fingerprint != reference.provenance.config_fingerprint
    assert sum(s.bytes for s in reference.shards) < sum(s.bytes for s in copy.shards)
    assert _column_bytes(made / "reference", SOURCE_ROW) < 0.1 * _column_bytes(made / "copy", "pixels.list.element")
    # every row names its own source row, which the id (fingerprint:row) also says
    table = pq.read_table(made / "reference" / "part-00005.parquet", columns=["id", "source", SOURCE_ROW])
    assert [int(i.split(":")[1]) for i in table.column("id").to_pylist()] == table.column(SOURCE_ROW).to_pylist()
    assert set(table.column("source").to_pylist()) == {str(made / "unl.parquet")}


def test_batches_and_resume_equal_the_copy_sets(made):
    copy, reference = _batches(made / "copy"), _batches(made / "reference")
    assert len(copy) == len(reference) > 20
    for (xa, ya, ta), (xb, yb, tb) in zip(copy, reference):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and all(torch.equal(ta[k], tb[k]) for k in ta)
    resumed = _batches(made / "reference", start_batch=9)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, _batches(made / "copy", start_batch=9)))


def test_a_student_trains_to_the_same_weights_and_metrics(made, tmp_path):
    records = {}
    for mode in ("copy", "reference"):
        proc = run_in_process("train", "--transfer", made / mode, "--epochs", "2", "--batch-size", "64", "--student-arg", "hidden=16",
                              "--alpha", "0.7", "--eval", made / mode, "--threads", "1", "--out", tmp_path / mode, "--json", "--quiet", check=True)
        records[mode] = json.loads(proc.stdout)
    a, b = (torch.load(tmp_path / m / "student.pt", weights_only=True) for m in ("copy", "reference"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    for key in ("train_loss", "errors", "nll", "agreement"):
        assert records["copy"][key] == records["reference"][key]
    proc = run_in_process("eval", tmp_path / "reference", "--data", made / "reference", "--json", check=True)
    assert json.loads(proc.stdout)["errors"] == records["copy"]["errors"]


def test_moved_sources_are_found_with_source_root_and_changed_ones_refused(tmp_path):
    rng = np.random.default_rng(1)
    lab = write_pixels_source(tmp_path / "lab.parquet", rng.integers(0, 16, (90, 64), dtype=np.uint8), rng.integers(0, 10, 90).tolist())
    run_in_process("generate", *BASE, "--source", lab, "--inputs", "reference", "--out", tmp_path / "set", check=True)
    (tmp_path / "elsewhere").mkdir()
    lab.rename(tmp_path / "elsewhere" / "lab.parquet")
    train = ["train", "--transfer", tmp_path / "set", "--epochs", "1", "--student-arg", "hidden=8", "--quiet"]
    proc = run_cli(*train, "--out", tmp_path / "run")
    assert proc.returncode == 2 and "pass --source-root DIR" in proc.stderr and not (tmp_path / "run" / "student.pt").exists()
    proc = run_in_process("verify", tmp_path / "set", "--source-root", tmp_path / "elsewhere", check=True)
    assert "1 referenced source unchanged" in proc.stdout
    run_in_process(*train, "--source-root", tmp_path / "elsewhere", "--out", tmp_path / "run", check=True)
    table = pq.read_table(tmp_path / "elsewhere" / "lab.parquet")
    pixels = table.column("pixels").to_pylist()[::-1]  # same rows, other order: only the hash can tell
    pq.write_table(table.set_column(0, "pixels", pa.array(pixels, table.schema.field("pixels").type)), tmp_path / "elsewhere" / "lab.parquet")
    proc = run_cli(*train, "--source-root", tmp_path / "elsewhere", "--out", tmp_path / "run2")
    assert proc.returncode == 2 and "the source changed" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run2" / "student.pt").exists()


def test_join_of_interleaved_rows_matches_numpy(tmp_path):
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 255, (300, 5), dtype=np.uint8), rng.integers(0, 255, (80, 5), dtype=np.uint8)
    write_pixels_source(tmp_path / "a.parquet", a, row_group_size=33)
    write_pixels_source(tmp_path / "b.parquet", b, row_group_size=7)
    paths = rng.choice(["a", "b"], 120)
    rows = np.where(paths == "a", rng.integers(0, 300, 120), rng.integers(0, 80, 120))
    table = pa.table({"source": pa.array(paths.tolist()), SOURCE_ROW: pa.array(rows, pa.int64())})
    join = SourceJoin({"a": str(tmp_path / "a.parquet"), "b": str(tmp_path / "b.parquet")}, ["pixels"])
    got = np.stack(join.inputs(table, "test").column("pixels").to_numpy(zero_copy_only=False))
    expected = np.stack([(a if p == "a" else b)[r] for p, r in zip(paths, rows)])
    assert np.array_equal(got, expected)
    contiguous = pa.table({"source": pa.array(["a"] * 50), SOURCE_ROW: pa.array(np.arange(30, 80), pa.int64())})
    assert np.array_equal(np.stack(join.inputs(contiguous, "test").column("pixels").to_numpy(zero_copy_only=False)), a[30:80])
    with pytest.raises(Exception, match="refers to rows 290..309"):
        join.inputs(pa.table({"source": pa.array(["a"] * 20), SOURCE_ROW: pa.array(np.arange(290, 310), pa.int64())}), "test")


def test_card_recipe_recombine_and_resume_guard(made, tmp_path, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (made / "reference" / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(made)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    copy = pq.read_table(made / "copy" / "part-00000.parquet")
    pixels = np.stack(copy.column("pixels").to_numpy(zero_copy_only=False)).astype(np.float32) / 16
    order = np.argsort(np.array(scope["table"].column("id").to_pylist()))
    ids = copy.column("id").to_pylist()
    x = scope["x"].numpy().reshape(720, 64)[order]
    position = {i: n for n, i in enumerate(np.array(scope["table"].column("id").to_pylist())[order])}
    assert np.array_equal(x[[position[i] for i in ids]], pixels)

    run_in_process("recombine", made / "reference", "-T", "3", "--out", tmp_path / "retempered", "--quiet", check=True)
    assert pq.read_schema(tmp_path / "retempered" / "part-00000.parquet").names[-1] == SOURCE_ROW
    a, b = _batches(tmp_path / "retempered")[0], _batches(made / "copy")[0]
    assert torch.equal(a[0], b[0])

    proc = run_cli("generate", *BASE, "--source", made / "lab.parquet", "--source", made / "unl.parquet", "--inputs", "copy",
                   "--out", made / "reference")
    assert proc.returncode == 2 and "--inputs" in proc.stderr


def test_per_token_sets_join_their_tokens(tmp_path):
    pytest.importorskip("tokenizers")
    from text_fixtures import SENTENCES, save_tokenizer, write_jsonl

    records = [{"text": s} for s in SENTENCES]
    run_in_process("convert", "--text", write_jsonl(tmp_path / "c.jsonl", records), "--tokenizer", save_tokenizer(tmp_path / "tok"),
                   "--max-length", "24", "--truncate", "--out", tmp_path / "src.parquet", "--quiet", check=True)
    summaries = {}
    for mode in ("copy", "reference"):
        run_in_process("generate", "--teacher", "teacher_models:tiny_lm_a", "--source", tmp_path / "src.parquet", "--targets", "topk:4",
                       "--batch-size", "4", "--inputs", mode, "--out", tmp_path / mode, "--quiet", check=True)
        summaries[mode] = json.loads(run_in_process("inspect", tmp_path / mode, "--json", check=True).stdout)
    for key in ("rows", "tokens", "target_positions", "mean_entropy_nats", "mean_tail_mass", "teacher_top1_next_token"):
        assert summaries["copy"][key] == summaries["reference"][key], key
    assert summaries["reference"]["bytes"] < summaries["copy"]["bytes"]
    copy, reference = _batches(tmp_path / "copy"), _batches(tmp_path / "reference")
    assert len(copy) == len(reference) and all(torch.equal(a[0], b[0]) for a, b in zip(copy, reference))


def pixels_as_floats(batch):
    """A --transform for the window test: the pixel column as float32 [rows, 64]."""
    return np.stack(batch.column("pixels").to_numpy(zero_copy_only=False)).astype(np.float32) / 16


def test_transform_windows_are_sized_like_the_copy_sets(made, tmp_path):
    base = [a for a in BASE if a not in ("--input-shape", "1,8,8", "--input-scale", "1/16")]
    for mode in ("copy", "reference"):
        run_in_process("generate", *base, "--source", made / "lab.parquet", "--transform", "test_inputs_reference:pixels_as_floats",
                       "--inputs", mode, "--out", tmp_path / mode, check=True)
    copy, reference = (StreamSource.open_transfer_set(tmp_path / m, window_bytes=60_000) for m in ("copy", "reference"))
    assert 2 <= copy.window_row_groups < 13  # 13 row groups in all: several windows
    assert 0.7 <= reference.window_row_groups / copy.window_row_groups <= 1.4  # not the whole set in one window


def test_the_recorded_spelling_and_path_win_over_this_directorys_files(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    (tmp_path / "a" / "data").mkdir(parents=True)
    (tmp_path / "b" / "data").mkdir(parents=True)
    write_pixels_source(tmp_path / "a" / "data" / "x.parquet", rng.integers(0, 16, (90, 64), dtype=np.uint8), rng.integers(0, 10, 90).tolist())
    write_pixels_source(tmp_path / "b" / "data" / "x.parquet", rng.integers(0, 16, (90, 64), dtype=np.uint8), rng.integers(0, 10, 90).tolist())
    monkeypatch.chdir(tmp_path / "a")
    for mode in ("copy", "reference"):
        run_in_process("generate", *BASE, "--source", "data/x.parquet", "--inputs", mode, "--out", tmp_path / mode, check=True)
    # A shard redone by a rerun that names the same file by its absolute path.
    (tmp_path / "reference" / "part-00000.parquet").write_bytes(b"damaged")
    run_cli("verify", tmp_path / "reference", "--drop-bad")
    run_in_process("generate", *BASE, "--source", tmp_path / "a" / "data" / "x.parquet", "--inputs", "reference",
                   "--out", tmp_path / "reference", check=True)
    sources = pq.read_table(tmp_path / "reference" / "part-00000.parquet", columns=["source"]).column("source").to_pylist()
    assert set(sources) == {"data/x.parquet"}
    # From b/, whose data/x.parquet is another file of the same size and rows: the absolute path generate recorded wins.
    monkeypatch.chdir(tmp_path / "b")
    assert run_in_process("verify", tmp_path / "reference").returncode == 0
    copy = _batches(tmp_path / "copy")
    for check in (True, False):
        reference = StreamSource.open_transfer_set(tmp_path / "reference", window_rows=100, check_sources=check)
        batches = [b.inputs for b in reference.epoch(batch_size=33, seed=5, epoch=0)]
        assert all(torch.equal(a[0], b) for a, b in zip(copy, batches))


def test_views_sets_replay_the_joined_inputs(made, tmp_path):
    views = ["--views", "3", "--augment", "shift(1)"]
    for mode in ("copy", "reference"):
        run_in_process("generate", *BASE, *views, "--source", made / "lab.parquet", "--inputs", mode, "--out", tmp_path / mode, check=True)
    copy, reference = _batches(tmp_path / "copy"), _batches(tmp_path / "reference")
    assert len(copy) == len(reference)
    for (xa, ya, ta), (xb, yb, tb) in zip(copy, reference):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and all(torch.equal(ta[k], tb[k]) for k in ta)
