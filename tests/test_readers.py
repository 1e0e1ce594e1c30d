"""Every reader docs/format.md names opens a set `transferset generate` wrote, float16
and float32, with the members' logits kept (a nested float column): pyarrow, pandas,
polars, DuckDB and Hugging Face `datasets`, each giving the same values, each by the
directory-level recipe docs/format.md gives for it."""

import numpy as np
import pyarrow.dataset as ds
import pytest

from conftest import run_cli

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "50", "--shard-rows", "128"]


@pytest.fixture(scope="module", params=["float16", "float32"])
def transfer_set(request, tmp_path_factory):
    from conftest import write_pixels_source

    root = tmp_path_factory.mktemp(request.param)
    rng = np.random.default_rng(0)
    lab = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, size=(300, 64), dtype=np.uint8),
                              rng.integers(0, 10, size=300).tolist(), row_group_size=97)
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", "--source", lab, *BASE,
            "--storage-dtype", request.param, "--keep-teacher-logits", "--out", root / "ts", "--quiet", check=True)
    return root / "ts"


def _expected(directory):
    table = ds.dataset(directory, exclude_invalid_files=True).to_table().sort_by("id")  # past README.md
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32)
    members = np.array([[np.asarray(m, np.float32) for m in row] for row in table.column("teacher_logits").to_pylist()])
    return table.column("id").to_pylist(), logits, members


def _check(ids, logits, members, expected):
    assert list(ids) == expected[0]
    np.testing.assert_array_equal(np.asarray(logits, np.float32), expected[1])
    np.testing.assert_array_equal(np.asarray(members, np.float32), expected[2])


def test_pandas_and_polars(transfer_set):
    import pandas as pd
    import polars as pl

    expected = _expected(transfer_set)
    frame = pd.read_parquet(transfer_set, ignore_prefixes=[".", "_", "README.md"]).sort_values("id")
    _check(frame["id"], np.stack(frame["logits"].to_numpy()), [np.stack(list(m)) for m in frame["teacher_logits"]], expected)
    frame = pl.read_parquet(f"{transfer_set}/*.parquet").sort("id")
    _check(frame["id"].to_list(), frame["logits"].to_numpy(), frame["teacher_logits"].to_numpy(), expected)
    frame = pl.scan_pyarrow_dataset(ds.dataset(transfer_set, exclude_invalid_files=True)).collect().sort("id")
    _check(frame["id"].to_list(), frame["logits"].to_numpy(), frame["teacher_logits"].to_numpy(), expected)


def test_a_bare_directory_needs_the_recipes(transfer_set):
    """What docs/format.md warns about: the card is not Parquet, so pyarrow's and polars'
    bare-directory reads refuse the set (if a release changes that, update the docs)."""
    import polars as pl

    with pytest.raises(Exception, match="README.md"):
        ds.dataset(transfer_set).to_table()
    with pytest.raises(Exception, match="glob"):
        pl.read_parquet(str(transfer_set))


def test_duckdb(transfer_set):
    duckdb = pytest.importorskip("duckdb")
    expected = _expected(transfer_set)
    for source in (f"'{transfer_set}'", f"'{transfer_set}/*.parquet'"):  # the directory itself, or the glob
        rows = duckdb.sql(f"SELECT id, logits, teacher_logits FROM read_parquet({source}) ORDER BY id").fetchall()
        _check([r[0] for r in rows], [list(r[1]) for r in rows], [[list(m) for m in r[2]] for r in rows], expected)


def test_hugging_face_datasets(transfer_set, tmp_path):
    datasets = pytest.importorskip("datasets")
    expected = _expected(transfer_set)
    loaded = datasets.load_dataset(str(transfer_set), split="train", cache_dir=str(tmp_path / "dir")).sort("id")
    _check(loaded["id"], loaded["logits"], loaded["teacher_logits"], expected)  # the card's configs find the shards
    files = sorted(str(p) for p in transfer_set.glob("*.parquet"))
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "files")).sort("id")
    _check(loaded["id"], loaded["logits"], loaded["teacher_logits"], expected)
