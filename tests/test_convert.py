"""`transferset convert`: arrays on disk -> Parquet source, and the bundled sample data.

Round trips compare what pyarrow and polars read back against the arrays the test
wrote; IDX files are written by a small writer here, independent of the parser.
Bad inputs go through the CLI and must give exit code 2, one line, no output file.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cli  # noqa: E402
from conftest import shared_dataset  # noqa: E402
from transferset.arrays import read_idx  # noqa: E402
from transferset.convert import input_shape_hint, parse_rows  # noqa: E402
from transferset.errors import UserError  # noqa: E402
from transferset.source_writer import METADATA_KEY  # noqa: E402

MNIST = ROOT.parent / "shared" / "datasets" / "mnist"
DIGITS = ROOT / "data" / "digits.parquet"
IDX_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    """IDX as LeCun describes it: 00 00 <type> <ndim>, big-endian uint32 dims, big-endian data."""
    header = bytes([0, 0, IDX_CODES[array.dtype.type], array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(payload, mtime=0) if gz else payload)
    return path


def convert(*argv, quiet: bool = True) -> tuple[int, str, str]:
    """Run `transferset convert ARGV` in this process: (exit code, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["convert", *map(str, argv), *(["--quiet"] if quiet else [])])
    return code, out.getvalue(), err.getvalue()


def read_back(path: Path) -> tuple[pa.Table, pl.DataFrame, dict]:
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    return table, pl.read_parquet(path), meta


def pixels_of(table: pa.Table, column: str = "pixels") -> np.ndarray:
    return table.column(column).combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, -1)


# -- round trips ------------------------------------------------------------------


@pytest.fixture
def arrays():
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, size=(37, 5, 3), dtype=np.uint8)  # odd sizes: remainders happen
    labels = rng.integers(0, 10, size=37).astype(np.int64)
    return images, labels


def test_npy_round_trip_pyarrow_and_polars(tmp_path, arrays):
    images, labels = arrays
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    out = tmp_path / "src.parquet"
    code, stdout, _ = convert("--images", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", out, "--row-group-rows", "10")
    assert code == 0
    assert "--input-shape 1,5,3" in stdout

    table, frame, meta = read_back(out)
    assert table.schema.field("pixels").type == pa.list_(pa.field("element", pa.uint8(), nullable=False), 15)
    assert not table.schema.field("pixels").nullable
    assert table.schema.field("label").type == pa.int32() and table.schema.field("label").nullable
    assert table.schema.field("row").type == pa.int64()
    np.testing.assert_array_equal(pixels_of(table), images.reshape(37, 15))
    np.testing.assert_array_equal(table.column("label").to_numpy(), labels)
    np.testing.assert_array_equal(table.column("row").to_numpy(), np.arange(37))
    assert [pq.ParquetFile(out).metadata.row_group(i).num_rows for i in range(4)] == [10, 10, 10, 7]

    assert frame.schema["pixels"] == pl.Array(pl.UInt8, 15)
    np.testing.assert_array_equal(frame["pixels"].to_numpy(), images.reshape(37, 15))
    np.testing.assert_array_equal(frame["label"].to_numpy(), labels)

    assert meta["shape"] == [5, 3] and meta["input_shape"] == "1,5,3"
    for name in (tmp_path / "x.npy", tmp_path / "y.npy"):
        assert meta["sha256"][str(name)] == hashlib.sha256(name.read_bytes()).hexdigest()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


@pytest.mark.parametrize(
    "dtype, gz",
    [(np.uint8, False), (np.uint8, True), (np.float32, False), (np.float32, True), (np.int16, True), (np.float64, False)],
)
def test_idx_round_trip(tmp_path, dtype, gz):
    rng = np.random.default_rng(3)
    if np.issubdtype(dtype, np.floating):
        images = rng.standard_normal((23, 4, 6)).astype(dtype)
    else:
        info = np.iinfo(dtype)
        images = rng.integers(info.min, info.max, size=(23, 4, 6), endpoint=True).astype(dtype)
    labels = rng.integers(0, 10, size=23).astype(np.uint8)
    suffix = ".gz" if gz else ""
    x = write_idx(tmp_path / f"imgs-idx3-ubyte{suffix}", images, gz)
    y = write_idx(tmp_path / f"labels-idx1-ubyte{suffix}", labels, gz)
    out = tmp_path / "src.parquet"
    code, _, _ = convert("--images", x, "--labels", y, "--out", out)
    assert code == 0
    table, frame, meta = read_back(out)
    assert table.schema.field("pixels").type.value_type == pa.from_numpy_dtype(dtype)
    np.testing.assert_array_equal(pixels_of(table), images.reshape(23, 24))  # exact, byte order fixed
    np.testing.assert_array_equal(frame["pixels"].to_numpy(), images.reshape(23, 24))
    np.testing.assert_array_equal(frame["label"].to_numpy(), labels.astype(np.int32))
    assert meta["shape"] == [4, 6] and meta["source_dtype"] == np.dtype(dtype).name


def test_npz_keys_slice_and_excluded_classes(tmp_path, arrays):
    images, labels = arrays
    np.savez_compressed(tmp_path / "d.npz", x=images, y=labels.astype(np.int32), other=np.zeros(3))
    out = tmp_path / "src.parquet"
    code, stdout, _ = convert(
        "--npz", tmp_path / "d.npz", "--images-key", "x", "--labels-key", "y", "--out", out,
        "--rows", "5:31", "--exclude-class", "3", "--exclude-class", "7", "--row-group-rows", "4",
    )
    assert code == 0
    keep = np.arange(5, 31)
    keep = keep[~np.isin(labels[keep], [3, 7])]
    assert f"{len(keep)} rows" in stdout and f"{26 - len(keep)} rows of class 3, 7 left out" in stdout
    table, frame, meta = read_back(out)
    np.testing.assert_array_equal(table.column("row").to_numpy(), keep)
    np.testing.assert_array_equal(pixels_of(table), images[keep].reshape(len(keep), 15))
    np.testing.assert_array_equal(frame["label"].to_numpy(), labels[keep])
    assert meta["rows"] == [5, 31] and meta["excluded_classes"] == [3, 7]
    assert meta["keys"] == {"images": "x", "labels": "y"} and meta["source_files"] == [str(tmp_path / "d.npz")]


def test_unlabelled_outputs(tmp_path, arrays):
    images, labels = arrays
    np.save(tmp_path / "x.npy", images)
    np.save(tmp_path / "y.npy", labels)
    code, stdout, _ = convert("--images", tmp_path / "x.npy", "--out", tmp_path / "a.parquet", "--input-column", "img")
    assert code == 0 and "unlabelled" in stdout
    assert pq.read_schema(tmp_path / "a.parquet").names == ["img", "row"]

    # --drop-labels still lets the labels choose rows: Hinton's "omit all 3s", unlabelled.
    code, _, _ = convert("--images", tmp_path / "x.npy", "--labels", tmp_path / "y.npy", "--out", tmp_path / "b.parquet",
                         "--drop-labels", "--exclude-class", "3")
    assert code == 0
    table = pq.read_table(tmp_path / "b.parquet")
    assert table.schema.names == ["pixels", "row"]
    np.testing.assert_array_equal(table.column("row").to_numpy(), np.flatnonzero(labels != 3))


def test_dtype_cast_and_channels_last_hint(tmp_path):
    images = np.random.default_rng(1).standard_normal((9, 6, 5, 3))  # float64, channels-last
    np.save(tmp_path / "x.npy", images)
    out = tmp_path / "src.parquet"
    code, stdout, _ = convert("--images", tmp_path / "x.npy", "--out", out, "--dtype", "float32")
    assert code == 0
    assert "--input-shape 6,5,3" in stdout and "channels-last" in stdout
    table = pq.read_table(out)
    assert table.schema.field("pixels").type.value_type == pa.float32()
    np.testing.assert_array_equal(pixels_of(table), images.astype(np.float32).reshape(9, -1))

    code, _, _ = convert("--images", tmp_path / "x.npy", "--out", out, "--overwrite")  # default keeps float64
    assert code == 0 and pq.read_schema(out).field("pixels").type.value_type == pa.float64()


def test_input_shape_hint_and_rows_parsing():
    assert input_shape_hint((28, 28)) == ("1,28,28", None)
    assert input_shape_hint((784,)) == ("784", None)
    assert input_shape_hint((3, 32, 32)) == ("3,32,32", None)  # channels-first stays as stored, no note
    assert input_shape_hint((32, 32, 3))[0] == "32,32,3" and input_shape_hint((32, 32, 3))[1]
    assert parse_rows("10:20") == (10, 20) and parse_rows(":5") == (None, 5) and parse_rows("7:") == (7, None)
    for bad in ("10", "a:b", "1:2:3", "-1:4"):
        with pytest.raises(UserError):
            parse_rows(bad)


def test_idx_parser_matches_independent_reading(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4) * -70000
    parsed = read_idx(write_idx(tmp_path / "a.idx", images))
    assert parsed.shape == (2, 3, 4)
    np.testing.assert_array_equal(parsed, images)


# -- bad input: exit code 2, one line, no output ----------------------------------


def _bad_cases(tmp: Path) -> dict[str, tuple[list, str]]:
    """name -> (arguments before --out, a fragment the error must contain)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(11, 4, 4), dtype=np.uint8)
    labels = rng.integers(0, 10, size=11).astype(np.uint8)
    x = write_idx(tmp / "x-idx3-ubyte", images)
    xgz = write_idx(tmp / "x-idx3-ubyte.gz", images, gz=True)
    y = write_idx(tmp / "y-idx1-ubyte", labels)
    full = x.read_bytes()
    (tmp / "short-idx3-ubyte").write_bytes(full[:-5])
    (tmp / "shorthead-idx3-ubyte").write_bytes(full[:9])
    (tmp / "long-idx3-ubyte").write_bytes(full + b"\0\0")
    (tmp / "short-idx3-ubyte.gz").write_bytes(gzip.compress(full[:-5], mtime=0))
    (tmp / "cut-idx3-ubyte.gz").write_bytes(xgz.read_bytes()[:-12])  # gzip stream itself cut short
    (tmp / "magic-idx3-ubyte").write_bytes(b"\x89PNG" + full[4:])
    write_idx(tmp / "y10-idx1-ubyte", labels[:10])
    write_idx(tmp / "yf-idx1-ubyte", labels.astype(np.float32))
    np.save(tmp / "y2d.npy", labels.reshape(11, 1).astype(np.int64))
    negative = labels.astype(np.int64)
    negative[4] = -1
    np.save(tmp / "yneg.npy", negative)
    np.save(tmp / "empty.npy", np.zeros((0, 4, 4), dtype=np.uint8))
    np.save(tmp / "flat.npy", np.zeros(11, dtype=np.float32))
    np.save(tmp / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    nan = rng.standard_normal((30, 4)).astype(np.float32)
    nan[17, 2] = np.nan
    np.save(tmp / "nan.npy", nan)
    np.save(tmp / "big.npy", np.full((3, 2), 1e6))  # overflows float16
    np.save(tmp / "x.npy", images)
    (tmp / "trunc.npy").write_bytes((tmp / "x.npy").read_bytes()[:-7])
    np.savez(tmp / "d.npz", a=images, b=labels)
    (tmp / "x.csv").write_text("1,2\n")
    (tmp / "existing.parquet").write_bytes(b"keep me")
    return {
        "truncated idx": (["--images", tmp / "short-idx3-ubyte", "--labels", y], "short-idx3-ubyte is truncated"),
        "truncated idx header": (["--images", tmp / "shorthead-idx3-ubyte"], "truncated inside its IDX header"),
        "trailing bytes": (["--images", tmp / "long-idx3-ubyte"], "2 bytes after the data"),
        "truncated idx in gz": (["--images", tmp / "short-idx3-ubyte.gz"], "short-idx3-ubyte.gz is truncated"),
        "truncated gzip": (["--images", tmp / "cut-idx3-ubyte.gz"], "cut-idx3-ubyte.gz is truncated or not valid gzip"),
        "bad magic": (["--images", tmp / "magic-idx3-ubyte"], "magic-idx3-ubyte is not an IDX file"),
        "count mismatch": (["--images", x, "--labels", tmp / "y10-idx1-ubyte"], "y10-idx1-ubyte has 10 labels but "),
        "float labels": (["--images", x, "--labels", tmp / "yf-idx1-ubyte"], "float32; they must be integer"),
        "2-D labels": (["--images", x, "--labels", tmp / "y2d.npy"], "must be 1-D"),
        "negative label": (["--images", x, "--labels", tmp / "yneg.npy"], "row 4 has label -1"),
        "empty images": (["--images", tmp / "empty.npy"], "is empty"),
        "1-D images": (["--images", tmp / "flat.npy"], "images must be [rows, ...]"),
        "non-numeric": (["--images", tmp / "strings.npy"], "not plain numbers"),
        "NaN": (["--images", tmp / "nan.npy", "--row-group-rows", "8"], "row 17 has NaN/Inf"),
        "float16 overflow": (["--images", tmp / "big.npy", "--dtype", "float16"], "out of range for float16"),
        "truncated npy": (["--images", tmp / "trunc.npy"], "trunc.npy is truncated"),
        "npz missing key": (["--npz", tmp / "d.npz", "--images-key", "x"], "has no array 'x'; name one with --images-key (it has: a, b)"),
        "npz without key": (["--images", tmp / "d.npz"], "(it has: a, b)"),
        "unknown extension": (["--images", tmp / "x.csv"], "unknown file type; convert reads .npy, .npz"),
        "missing file": (["--images", tmp / "nope.npy"], "does not exist"),
        "exclude without labels": (["--images", x, "--exclude-class", "3"], "--exclude-class needs labels"),
        "rows past the end": (["--images", x, "--labels", y, "--rows", "5:12"], "--rows 5:12 does not select rows of an input with 11 rows"),
        "rows syntax": (["--images", x, "--rows", "5"], "must look like START:STOP"),
        "everything excluded": (["--images", x, "--labels", y, *[a for k in range(10) for a in ("--exclude-class", k)]], "leaves no rows"),
        "images and npz": (["--images", x, "--npz", tmp / "d.npz"], "not both"),
        "nothing given": ([], "nothing to convert"),
        "drop labels without labels": (["--images", x, "--drop-labels"], "--drop-labels needs labelled input"),
        "clashing columns": (["--images", x, "--input-column", "row"], "must all differ"),
    }


def test_every_bad_input_is_one_line_exit_2_and_leaves_no_file(tmp_path):
    cases = _bad_cases(tmp_path)
    for number, (name, (argv, fragment)) in enumerate(cases.items()):
        out = tmp_path / f"case{number}.parquet"
        before = set(os.listdir(tmp_path))
        code, stdout, stderr = convert(*argv, "--out", out)
        assert code == 2, f"{name}: exit {code}, stderr {stderr!r}"
        lines = stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("transferset convert: error: "), f"{name}: {stderr!r}"
        assert fragment in lines[0], f"{name}: {fragment!r} not in {lines[0]!r}"
        assert "Traceback" not in stderr and stdout == ""
        assert set(os.listdir(tmp_path)) == before, f"{name}: left files behind"


def test_existing_output_needs_overwrite(tmp_path, arrays):
    np.save(tmp_path / "x.npy", arrays[0])
    out = tmp_path / "src.parquet"
    out.write_bytes(b"keep me")
    code, _, stderr = convert("--images", tmp_path / "x.npy", "--out", out)
    assert code == 2 and "already exists; pass --overwrite" in stderr and out.read_bytes() == b"keep me"
    assert convert("--images", tmp_path / "x.npy", "--out", out, "--overwrite")[0] == 0
    assert pq.read_metadata(out).num_rows == 37


def test_subprocess_error_and_progress(tmp_path):
    """As users meet it: a real process, a real exit code, no traceback, progress on stderr."""
    np.save(tmp_path / "x.npy", np.zeros((5, 2), dtype=np.float32))
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=np.int64))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    base = [sys.executable, "-m", "cli", "convert", "--images", str(tmp_path / "x.npy")]
    bad = subprocess.run(base + ["--labels", str(tmp_path / "y.npy"), "--out", str(tmp_path / "a.parquet")],
                         capture_output=True, text=True, cwd=ROOT, env=env)
    assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1 and "Traceback" not in bad.stderr
    assert "y.npy has 4 labels but " in bad.stderr and not (tmp_path / "a.parquet").exists()
    good = subprocess.run(base + ["--out", str(tmp_path / "b.parquet")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert good.returncode == 0, good.stderr
    assert "convert: 5/5 rows" in good.stderr and "--input-shape 2" in good.stdout


def test_write_refused_mid_file_is_one_line_naming_the_output_and_leaves_nothing(tmp_path):
    """A file-size limit (RLIMIT_FSIZE, which binds root too) hit mid-write: the shared
    atomic write turns EFBIG into one line naming --out, and deletes its temp file."""
    import resource

    np.save(tmp_path / "x.npy", np.random.default_rng(0).random((4000, 64)))  # ~2 MB of float64 to write
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "src.parquet"

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    proc = subprocess.run([sys.executable, "-m", "cli", "convert", "--images", str(tmp_path / "x.npy"), "--out", str(out),
                           "--row-group-rows", "500", "--quiet"], capture_output=True, text=True, cwd=ROOT, preexec_fn=limit_file_size,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"transferset convert: error: {out} is larger than the file-size limit allows (EFBIG"), proc.stderr
    assert list(out_dir.iterdir()) == []  # neither the output nor a temp file


def test_convert_never_imports_torch(tmp_path):
    code = (
        "import sys; import numpy as np; np.save(sys.argv[1] + '/x.npy', np.zeros((3, 2), np.uint8));"
        "from transferset.commands import convert as cmd; from transferset.convert import convert_files;"
        "convert_files(sys.argv[1] + '/x.npy', sys.argv[1] + '/o.parquet');"
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])))
    assert proc.returncode == 0, proc.stderr


# -- the real MNIST test file -----------------------------------------------------


def test_real_mnist_test_slice(tmp_path):
    shared_dataset(MNIST / "t10k-images-idx3-ubyte.gz")
    # Independent parse: fixed MNIST header sizes (16 and 8 bytes), nothing from transferset.
    raw_images = np.frombuffer(gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes()), dtype=np.uint8)
    raw_labels = np.frombuffer(gzip.decompress((MNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()), dtype=np.uint8)
    assert raw_images[:4].tolist() == [0, 0, 8, 3] and raw_images.size == 16 + 10000 * 784
    images = raw_images[16:].reshape(10000, 784)
    labels = raw_labels[8:]
    out = tmp_path / "mnist-test.parquet"
    code, stdout, _ = convert("--images", MNIST / "t10k-images-idx3-ubyte.gz", "--labels", MNIST / "t10k-labels-idx1-ubyte.gz",
                              "--out", out, "--rows", "1000:3001", "--row-group-rows", "512")
    assert code == 0 and "--input-shape 1,28,28" in stdout
    table, frame, meta = read_back(out)
    assert table.num_rows == 2001 and meta["shape"] == [28, 28]
    assert table.column("label")[0].as_py() == int(labels[1000])
    assert int(pixels_of(table).sum(dtype=np.int64)) == int(images[1000:3001].sum(dtype=np.int64))
    assert int(frame["pixels"].to_numpy().sum(dtype=np.int64)) == int(images[1000:3001].sum(dtype=np.int64))
    np.testing.assert_array_equal(frame["label"].to_numpy(), labels[1000:3001])


# -- the bundled sample -----------------------------------------------------------


def test_bundled_digits_sample():
    table = pq.read_table(DIGITS)
    assert table.schema.field("pixels").type == pa.list_(pa.field("element", pa.uint8(), nullable=False), 64)
    assert table.schema.field("label").type == pa.int32() and table.schema.field("row").type == pa.int64()
    assert table.num_rows == 1797
    pixels = pixels_of(table)
    assert pixels.min() == 0 and pixels.max() == 16
    assert sorted(set(table.column("label").to_pylist())) == list(range(10))
    np.testing.assert_array_equal(table.column("row").to_numpy(), np.arange(1797))
    meta = json.loads(table.schema.metadata[METADATA_KEY])
    assert meta["shape"] == [8, 8] and meta["origin"]["doi"] == "10.24432/C50P49"
    # The checksum printed in data/README.md is the file's.
    readme = (ROOT / "data" / "README.md").read_text()
    assert hashlib.sha256(DIGITS.read_bytes()).hexdigest() in readme
    assert f"{DIGITS.stat().st_size:,} bytes" in readme


def test_export_digits_regenerates_the_sample(tmp_path, capsys):
    sklearn = pytest.importorskip("sklearn.datasets")
    spec = importlib.util.spec_from_file_location("export_digits", ROOT / "scripts" / "export_digits.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    for out in (first, second):
        assert script.main(["--out", str(out)]) == 0
    assert first.read_bytes() == second.read_bytes()  # deterministic
    regenerated, bundled = pq.read_table(first), pq.read_table(DIGITS)
    assert regenerated.equals(bundled) and regenerated.schema.metadata == bundled.schema.metadata
    if pq.read_metadata(DIGITS).created_by == pq.read_metadata(first).created_by:
        assert first.read_bytes() == DIGITS.read_bytes()  # same pyarrow: byte for byte
    digits = sklearn.load_digits()
    np.testing.assert_array_equal(pixels_of(bundled), digits.data.astype(np.uint8))
    np.testing.assert_array_equal(bundled.column("label").to_numpy(), digits.target)
