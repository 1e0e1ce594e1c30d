"""`transferset generate` end to end through the CLI: round trip, provenance, multi-writer."""

import hashlib
import json

import threading
import time

import numpy as np
import polars as pl
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cli
from transferset.format.manifest import read_manifest
from transferset.format.schema import METADATA_KEY

import teacher_models

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "50", "--shard-rows", "128", "--row-group-rows", "40"]


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def export_teacher(path, factory):
    model = factory().eval()
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(model, (torch.zeros(2, 1, 8, 8),), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return model


def test_round_trip_matches_teachers(tmp_path, sources):
    lab, unl = sources
    exported = export_teacher(tmp_path / "b.pt2", teacher_models.tiny_b)
    out = tmp_path / "ts"
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--teacher", tmp_path / "b.pt2", "--teacher-weight", "3",
                   "--source", lab, "--source", unl, *BASE, "--combine", "arithmetic", "-T", "3",
                   "--storage-dtype", "float32", "--keep-teacher-logits", "--out", out)
    assert proc.returncode == 0, proc.stderr

    table = pl.read_parquet(f"{out}/*.parquet")  # polars, directly
    assert ds.dataset(out, exclude_invalid_files=True).count_rows() == 720  # pyarrow.dataset, past the card
    assert table.height == 720 and table["id"].n_unique() == 720
    src = pq.read_table(lab)
    got_labels = table.filter(pl.col("source") == str(lab))["label"].to_list()
    assert got_labels == src["label"].to_pylist()
    assert table.filter(pl.col("source") == str(unl))["label"].null_count() == 203

    # Independent reference: run both teachers here, combine in NumPy float64.
    pixels = np.stack(table["pixels"].to_numpy()).astype(np.float32) / 16
    x = torch.from_numpy(pixels).view(-1, 1, 8, 8)
    with torch.no_grad():
        za = teacher_models.tiny_a()(x).double().numpy()
        zb = exported(x).double().numpy()
    want = 0.25 * np_softmax(za / 3) + 0.75 * np_softmax(zb / 3)
    logits = np.stack(table["logits"].to_numpy()).astype(np.float64)
    np.testing.assert_allclose(np_softmax(logits / 3), want, rtol=1e-4, atol=1e-6)
    members = np.stack(table["teacher_logits"].to_numpy())  # (N, K, C)
    np.testing.assert_allclose(members[:, 0], za, rtol=1e-4, atol=1e-5)

    manifest = read_manifest(out)
    assert manifest.rows == 720 and len(manifest.shards) == 7  # 517 -> 5 shards of <=128 rows, 203 -> 2
    prov = manifest.provenance
    assert prov.combine == "arithmetic" and prov.temperature == 3.0 and prov.num_classes == 10
    assert [t["weight"] for t in prov.teachers] == [0.25, 0.75]
    assert prov.teachers[1]["sha256"] == hashlib.sha256((tmp_path / "b.pt2").read_bytes()).hexdigest()
    assert [s["labelled_rows"] for s in prov.sources] == [517 - 11, 0]
    assert prov.sources[0]["fingerprint"] == hashlib.sha256(lab.read_bytes()).hexdigest()
    for shard in manifest.shards:
        path = out / shard.path
        assert hashlib.sha256(path.read_bytes()).hexdigest() == shard.sha256
        meta = pq.read_schema(path).metadata
        assert json.loads(meta[METADATA_KEY]) == prov.encode()  # full provenance in every shard


def test_float16_storage_and_inspect(tmp_path, sources):
    lab, unl = sources
    out = tmp_path / "ts"
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", "--source", lab,
            "--source", unl, *BASE, "-T", "4", "--keep-teacher-logits", "--out", out, check=True)
    table = pl.read_parquet(f"{out}/*.parquet")
    assert table.schema["logits"] == pl.Array(pl.Float16, 10)
    summary = json.loads(run_cli("inspect", out, "--json", check=True).stdout)
    assert summary["rows"] == 720 and summary["labelled_rows"] == 506 and summary["unlabelled_rows"] == 214
    # Accuracy and entropy recomputed here from the stored arrays.
    logits = np.stack(table["logits"].to_numpy()).astype(np.float64)
    labels = table["label"].to_numpy()
    mask = ~np.isnan(labels.astype(float))
    acc = (logits.argmax(1)[mask] == labels[mask]).mean()
    assert summary["ensemble_accuracy"] == pytest.approx(acc)
    p = np_softmax(logits / 4)
    assert summary["mean_entropy_nats"] == pytest.approx(-(p * np.log(p)).sum(1).mean(), rel=1e-4)
    members = np.stack(table["teacher_logits"].to_numpy()).astype(np.float64).argmax(-1)
    assert summary["members_agree"] == pytest.approx((members[:, 0] == members[:, 1]).mean())
    human = run_cli("inspect", out, check=True).stdout
    assert "ensemble accuracy" in human and "tiny_a" in human


def test_rerun_is_a_no_op_and_other_config_is_refused(tmp_path, sources):
    lab, _ = sources
    out = tmp_path / "ts"
    args = ["generate", "--teacher", "teacher_models:tiny_a", "--source", lab, *BASE, "--out", out]
    run_cli(*args, check=True)
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    again = run_cli(*args)
    assert again.returncode == 0 and "already complete" in again.stderr
    refused = run_cli(*args[:-2], "-T", "2", "--out", out)
    assert refused.returncode == 2 and "different configuration" in refused.stderr
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    run_cli(*args[:-2], "-T", "2", "--out", out, "--overwrite", check=True)
    assert read_manifest(out).temperature == 2.0


def test_independent_writers_assemble_one_set(tmp_path, sources):
    lab, unl = sources
    common = ["generate", "--teacher", "teacher_models:tiny_a", "--source", lab, "--source", unl, *BASE, "--num-writers", "3"]
    for i in (2, 0):
        proc = run_cli(*common, "--writer-index", i, "--out", tmp_path / "multi", check=True)
        assert "waiting for other writers" in proc.stderr
        assert not (tmp_path / "multi" / "_manifest.json").exists()
    run_cli(*common, "--writer-index", 1, "--out", tmp_path / "multi", check=True)
    single = ["generate", "--teacher", "teacher_models:tiny_a", "--source", lab, "--source", unl, *BASE, "--out", tmp_path / "single"]
    run_cli(*single, check=True)
    a = pl.read_parquet(f"{tmp_path}/multi/*.parquet").sort("id")
    b = pl.read_parquet(f"{tmp_path}/single/*.parquet").sort("id")
    assert a.equals(b)
    assert read_manifest(tmp_path / "multi").rows == 720


def test_zero_teacher_weight_is_zero_and_out_inside_a_source_directory_resumes(tmp_path, sources):
    lab, _ = sources
    src = tmp_path / "srcdir"
    src.mkdir()
    (src / "lab.parquet").write_bytes(lab.read_bytes())
    out = src / "ts"  # the transfer set lives inside the directory given as --source
    args = ["generate", "--teacher", "teacher_models:tiny_a", "--teacher-weight", "0", "--teacher", "teacher_models:tiny_b",
            "--source", src, *BASE, "--keep-teacher-logits", "--storage-dtype", "float32", "--out", out]
    run_cli(*args, check=True)
    again = run_cli(*args)
    assert again.returncode == 0 and "already complete" in again.stderr  # its own shards are not new sources
    manifest = read_manifest(out)
    assert [t["weight"] for t in manifest.provenance.teachers] == [0.0, 1.0]
    assert [s["path"] for s in manifest.provenance.sources] == [str(src / "lab.parquet")]
    table = pl.read_parquet(f"{out}/*.parquet")
    stored = np.stack(table["logits"].to_numpy())
    member_b = np.stack(table["teacher_logits"].to_numpy())[:, 1]
    np.testing.assert_allclose(np_softmax(stored), np_softmax(member_b), rtol=1e-5, atol=1e-7)  # weight 0: only b


def test_row_groups_follow_row_group_rows_not_the_batch_size(tmp_path, sources, monkeypatch):
    """--row-group-rows sets the row groups (the unit readers seek and shuffle), whatever
    the teacher batch size; the in-process pure path (generate_shard) writes the same."""
    from transferset import writer
    from transferset.generate import GenerateConfig, generate_shard, prepare
    from transferset.generate.shard import ShardJob
    from transferset.inputs import InputSpec
    from transferset.sources import plan_shards
    from transferset.teachers import TeacherSpec

    lab, _ = sources
    flags = ["--input-column", "pixels", "--input-shape", "1,8,8", "--batch-size", "16", "--shard-rows", "128"]
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", lab, *flags, "--row-group-rows", "40",
            "--out", tmp_path / "ts", "--quiet", check=True)
    manifest = read_manifest(tmp_path / "ts")
    groups = [[pq.ParquetFile(p).metadata.row_group(i).num_rows for i in range(pq.ParquetFile(p).num_row_groups)]
              for p in manifest.shard_paths()]
    expected = [[40, 40, 40, 8] if s.rows == 128 else [40] * (s.rows // 40) + ([s.rows % 40] if s.rows % 40 else [])
                for s in manifest.shards]
    assert groups == expected and sum(map(sum, groups)) == manifest.rows

    # The pure path, with a byte cap small enough to split the groups further: same rows, smaller groups.
    monkeypatch.setattr(writer, "MAX_ROW_GROUP_BYTES", 2048)
    cfg = GenerateConfig(teachers=[TeacherSpec("teacher_models:tiny_a")], sources=[str(lab)], out=tmp_path / "pure",
                         input_spec=InputSpec(columns=("pixels",), shape=(1, 8, 8)), batch_size=16, shard_rows=128,
                         row_group_rows=40, quiet=True)
    context = prepare(cfg)
    record = generate_shard(ShardJob(plan_shards(context.sources, 128)[0], context))
    pf = pq.ParquetFile(tmp_path / "pure" / record.path)
    sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)]
    assert sum(sizes) == 128 and max(sizes) < 40 and len(set(sizes[:-1])) == 1
    table = pq.read_table(tmp_path / "pure" / record.path)
    assert table.column("logits").equals(pq.read_table(manifest.shard_paths()[0]).column("logits"))


def test_overlapped_engine_writes_what_the_sequential_one_writes(tmp_path):
    """LocalEngine(overlap=True) (the CUDA layout: the next batch's teachers on a thread
    while this one is encoded) on the CPU: the same rows and values, batch for batch;
    and a NaN teacher is still refused (the finiteness check moved to encode_batch)."""
    import cli
    from conftest import write_pixels_source
    from transferset.generate import engines

    rng = np.random.default_rng(3)
    source = write_pixels_source(tmp_path / "lab.parquet", rng.integers(0, 16, (301, 64), dtype=np.uint8), rng.integers(0, 10, 301).tolist())
    args = ["generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", "--source", str(source),
            "--input-shape", "64", "--batch-size", "32", "--shard-rows", "100", "--storage-dtype", "float32", "--quiet"]
    assert cli.main([*args, "--out", str(tmp_path / "plain")]) == 0
    engines.unregister("local")
    engines.register(engines.LocalEngine(overlap=True))
    try:
        assert cli.main([*args, "--out", str(tmp_path / "overlapped")]) == 0
        nan_rows = rng.integers(0, 16, (400, 64), dtype=np.uint8)
        nan_rows[7, 0] = 16  # teacher_models.nan_teacher returns NaN on such rows
        bad = write_pixels_source(tmp_path / "nan.parquet", nan_rows)
        started = time.perf_counter()
        assert cli.main(["generate", "--teacher", "teacher_models:nan_teacher", "--source", str(bad), "--input-shape", "64",
                         "--batch-size", "16", "--quiet", "--out", str(tmp_path / "nan")]) == 2
        # The error stops and joins the threads at once, though the teachers' thread waited for a
        # free slot (the batches behind the failed one): none is left to exit inside Arrow.
        assert time.perf_counter() - started < 10
        assert not [t.name for t in threading.enumerate() if t.name == "transferset-reader"]
    finally:
        engines.unregister("local")
        engines.register(engines.LocalEngine())
    read = lambda d: ds.dataset(str(d), format="parquet", exclude_invalid_files=True).to_table().sort_by("id")  # noqa: E731
    assert read(tmp_path / "overlapped").equals(read(tmp_path / "plain"))
