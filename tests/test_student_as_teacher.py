"""A trained `student.pt2` is a teacher as it is: it carries the input spec it was
trained on, generate applies it when no input flags are given, and refuses flags
that contradict it (issue 14, item 8). Fixed-batch exports run in batches of
their size (item 11)."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cli, write_pixels_source
from transferset.format.manifest import read_manifest
from transferset.teachers.archives import unsafe_export_parts


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A tiny student trained on x / 16, and a labelled source of raw 0..15 pixels."""
    root = tmp_path_factory.mktemp("student")
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 16, size=(97, 64), dtype=np.uint8)
    labels = (pixels[:, 0] >= 8).astype(int) + 2 * (pixels[:, 1] >= 8)  # learnable: training must not stop at chance
    source = write_pixels_source(root / "data.parquet", pixels, labels.tolist())
    run_cli("train", "--data", source, "--input-shape", "1,8,8", "--input-scale", "1/16", "--label-column", "label",
            "--student-arg", "hidden=16", "--optimizer", "adamw", "--lr", "0.02", "--epochs", "4", "--batch-size", "16",
            "--quiet", "--out", root / "run", check=True)
    return {"program": root / "run" / "student.pt2", "source": source, "pixels": pixels}


def targets(out) -> np.ndarray:
    """softmax(logits / T) of every row, in source order (ids are `<hash>:<row>`)."""
    manifest = read_manifest(out)
    table = pa.concat_tables(pq.read_table(out / s.path, columns=["id", "logits"]) for s in manifest.shards)
    order = np.argsort([int(i.rsplit(":", 1)[1]) for i in table.column("id").to_pylist()])
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False))[order].astype(np.float64)
    t = manifest.provenance.temperature
    e = np.exp((logits - logits.max(axis=1, keepdims=True)) / t)
    return e / e.sum(axis=1, keepdims=True)


def test_student_pt2_declares_its_input_spec_and_passes_the_safety_check(student):
    import zipfile

    with zipfile.ZipFile(student["program"]) as archive:
        name = next(n for n in archive.namelist() if n.endswith("extra/transferset_input.json"))
        declared = json.loads(archive.read(name))
    assert declared["scale"] == 1 / 16 and declared["shape"] == [1, 8, 8] and declared["columns"] == ["pixels"]
    assert unsafe_export_parts(str(student["program"])) == []


def test_generate_from_a_student_applies_its_declared_spec(student, tmp_path):
    out = tmp_path / "set"
    proc = run_cli("generate", "--teacher", student["program"], "--source", student["source"], "--storage-dtype", "float32",
                   "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "inputs as teacher" in proc.stderr and "scale 0.0625" in proc.stderr
    program = torch.export.load(str(student["program"])).module()
    x = torch.from_numpy(student["pixels"].astype(np.float32).reshape(-1, 1, 8, 8) / 16)
    expected = torch.softmax(program(x), dim=1).detach().numpy()
    np.testing.assert_allclose(targets(out), expected, atol=1e-5)
    assert read_manifest(out).provenance.input["scale"] == 1 / 16  # the set records what the teacher saw

    quiet = run_cli("generate", "--teacher", student["program"], "--source", student["source"], "--out", tmp_path / "q", "--quiet")
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_matching_flags_are_accepted_and_contradicting_ones_refused(student, tmp_path):
    same = run_cli("generate", "--teacher", student["program"], "--source", student["source"], "--input-shape", "1,8,8",
                   "--input-scale", "1/16", "--out", tmp_path / "same", "--quiet")
    assert same.returncode == 0, same.stderr
    for flags, named in ((["--input-scale", "1"], "--input-scale 1 contradicts"),
                         (["--input-shape", "64"], "--input-shape 64 contradicts"),
                         (["--input-mean", "0.5"], "--input-mean 0.5 contradicts")):
        proc = run_cli("generate", "--teacher", student["program"], "--source", student["source"], *flags, "--out", tmp_path / "bad")
        assert proc.returncode == 2, proc.stderr
        assert named in proc.stderr and "declares" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def _export(model, batch, path, dynamic):
    example = torch.zeros(batch, 1, 8, 8)
    shapes = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    torch.export.save(torch.export.export(model.eval(), (example,), dynamic_shapes=shapes), str(path))
    return path


def test_a_fixed_batch_export_runs_in_batches_of_its_size(tmp_path, sources):
    torch.manual_seed(7)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    fixed = _export(model, 32, tmp_path / "fixed.pt2", dynamic=False)
    dynamic = _export(model, 2, tmp_path / "dynamic.pt2", dynamic=True)
    flags = ["--source", sources[0], "--input-shape", "1,8,8", "--input-scale", "1/16", "--storage-dtype", "float32", "--quiet"]
    for batch in ("50", "1024"):  # neither a multiple of 32; 517 rows leave a padded last batch
        proc = run_cli("generate", "--teacher", fixed, *flags, "--batch-size", batch, "--out", tmp_path / f"fixed-{batch}")
        assert proc.returncode == 0, proc.stderr
    run_cli("generate", "--teacher", dynamic, *flags, "--out", tmp_path / "dynamic", check=True)
    reference = targets(tmp_path / "dynamic")
    assert reference.shape == (517, 10)
    for batch in ("50", "1024"):
        np.testing.assert_allclose(targets(tmp_path / f"fixed-{batch}"), reference, atol=1e-6)


def _redeclared(program, path, **changes):
    """A copy of `program` whose recorded input spec has `changes` applied."""
    import zipfile

    with zipfile.ZipFile(program) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("extra/transferset_input.json"):
                data = json.dumps({**json.loads(data), **changes}).encode()
            dst.writestr(item, data)
    return path


def test_teachers_that_declare_different_inputs_or_a_transform_are_refused(student, tmp_path):
    other = _redeclared(student["program"], tmp_path / "other.pt2", scale=1.0)
    proc = run_cli("generate", "--teacher", student["program"], "--teacher", other, "--source", student["source"], "--out", tmp_path / "o")
    assert proc.returncode == 2 and "were trained on different inputs (scale: 0.0625 vs 1)" in proc.stderr
    transformed = _redeclared(student["program"], tmp_path / "t.pt2", transform="somewhere:fn")
    proc = run_cli("generate", "--teacher", transformed, "--source", student["source"], "--out", tmp_path / "o")
    assert proc.returncode == 2 and "pass that --transform" in proc.stderr and "--transform somewhere:fn" in proc.stderr
    damaged = _redeclared(student["program"], tmp_path / "d.pt2", columns="pixels")
    proc = run_cli("generate", "--teacher", damaged, "--source", student["source"], "--out", tmp_path / "o")
    assert proc.returncode == 2 and "carries a damaged input spec" in proc.stderr
