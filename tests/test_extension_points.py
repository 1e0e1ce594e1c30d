"""The "where to add" recipes of docs/architecture.md, each proven end to end.

Every test registers a tiny extension from here (a teacher form, an engine, a
target kind, a loss, a student) through the public registries, runs the real
commands in-process, checks the result against an independent computation, and
unregisters it again.
"""

from __future__ import annotations

import contextlib
import io
import zipfile

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import torch

import cli
from transferset.format import codecs
from transferset.format.manifest import read_manifest
from transferset.generate import engines, generate_shard
from transferset import teachers
from transferset.teachers.files import existing
from transferset.io import file_sha256

PIXELS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


def _cli(*argv) -> None:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = cli.main([str(a) for a in argv] + ["--quiet"])
    assert code == 0, err.getvalue()


def _np_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _table(directory) -> pl.DataFrame:
    return pl.read_parquet([str(p) for p in read_manifest(directory).shard_paths()]).sort("id")


# -- a new teacher form: one loader module + register() ---------------------------------------


class NpzLinearLoader:
    """A linear teacher stored as weight.npy + bias.npy in an .npz (an npz is a zip of .npy files)."""

    kind = "npz-linear"

    def recognises(self, target: str) -> bool:
        try:
            with zipfile.ZipFile(target) as archive:
                return {"weight.npy", "bias.npy"} <= set(archive.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    def fingerprint(self, target, spec) -> dict:
        return {"spec_sha256": file_sha256(existing(target, "--teacher"))}

    def load(self, target, spec, trust) -> teachers.Teacher:
        arrays = np.load(target)
        layer = torch.nn.Linear(*arrays["weight"].shape[::-1])
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(arrays["weight"]))
            layer.bias.copy_(torch.from_numpy(arrays["bias"]))
        module = torch.nn.Sequential(torch.nn.Flatten(), layer)
        return teachers.Teacher("npz-linear", self.kind, file_sha256(existing(target, "--teacher")), module, spec)


@pytest.fixture
def npz_teacher(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "linear.npz"
    np.savez(path, weight=rng.normal(0, 1, (10, 64)).astype(np.float32), bias=rng.normal(0, 1, 10).astype(np.float32))
    teachers.register(NpzLinearLoader())
    yield path
    teachers.unregister(NpzLinearLoader.kind)


def test_a_new_teacher_form(tmp_path, sources, npz_teacher):
    """Recognised by content (no prefix), and by an explicit `kind:` prefix."""
    for name, spec in (("by-type", npz_teacher), ("by-name", f"npz-linear:{npz_teacher}")):
        _cli("generate", "--teacher", spec, "--source", sources[0], *PIXELS, "-T", "2", "--storage-dtype", "float32",
             "--out", tmp_path / name)
    table = pl.read_parquet(sources[0])
    x = np.stack(table["pixels"].to_numpy()).astype(np.float32) / 16
    arrays = np.load(npz_teacher)
    want = _np_softmax((x @ arrays["weight"].T + arrays["bias"]) / 2)
    got = read_manifest(tmp_path / "by-type")
    assert got.provenance.teachers[0]["format"] == "npz-linear"
    stored = pl.read_parquet([str(p) for p in got.shard_paths()])  # shards keep source order
    logits = np.stack(stored["logits"].to_numpy()).astype(np.float64)
    np.testing.assert_allclose(_np_softmax(logits / 2), want, rtol=1e-5, atol=1e-7)
    assert _table(tmp_path / "by-type").equals(_table(tmp_path / "by-name"))


# -- a new engine: one module + register(); it calls generate_shard per job --------------------


class SerialEngine:
    name = "serial"

    def run(self, jobs, context, bar) -> None:
        for job in jobs:
            generate_shard(job)
            bar.advance(job.plan.rows)


def test_a_new_engine_writes_what_the_local_one_writes(tmp_path, sources):
    engines.register(SerialEngine())
    try:
        common = ["generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b", "--source", sources[0],
                  "--source", sources[1], *PIXELS, "--batch-size", "50", "--shard-rows", "200", "--row-group-rows", "64"]
        _cli(*common, "--engine", "serial", "--out", tmp_path / "serial")
        _cli(*common, "--out", tmp_path / "local")
    finally:
        engines.unregister(SerialEngine.name)
    serial, local = read_manifest(tmp_path / "serial"), read_manifest(tmp_path / "local")
    assert [s.rows for s in serial.shards] == [s.rows for s in local.shards] == [200, 200, 117, 200, 3]
    assert _table(tmp_path / "serial").equals(_table(tmp_path / "local"))


# -- a new target kind: one codec module + register() ---------------------------------------


class ProbsCodec:
    """Stores the combined distribution itself, softmax(target / T), as float32 probabilities."""

    kind = "probs"
    losses = ("kd",)

    def arrow_fields(self, provenance):
        return [pa.field("probs", pa.list_(pa.field("element", pa.float32(), nullable=False), provenance.num_classes), nullable=False)]

    def float_leaves(self, provenance):
        return ["probs.list.element"]

    def encode(self, targets, members, provenance):
        probs = torch.softmax(targets / provenance.temperature, dim=-1).cpu().numpy()
        return {"probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1), pa.float32()), probs.shape[1])}

    def decode_columns(self, provenance):
        return ["probs"]

    def decoded_bytes_per_row(self, provenance):
        return 4 * provenance.num_classes

    def decode(self, table, provenance, where):
        probs = np.stack(table.column("probs").to_numpy()).astype(np.float32)
        with np.errstate(divide="ignore"):
            return {"target_logits": provenance.temperature * np.log(probs)}  # softmax(t / T) == probs

    def check_schema(self, schema, provenance, where):
        assert "probs" in schema.names

    def bytes_per_row(self, provenance):
        return 4 * provenance.num_classes

    def temperature_exact(self, provenance):
        return False  # probabilities at the stored T

    def parse_options(self, text):
        return {}

    def statistics(self, provenance):
        p = pl.col("probs").cast(pl.List(pl.Float32))
        return {"top1": pl.col("probs").arr.arg_max(), "entropy": -p.list.eval(pl.element() * pl.element().clip(1e-30).log()).list.sum()}

    def check_options(self, options, num_classes):
        pass

    def describe(self, provenance):
        return "- `probs`: the combined teacher distribution at the stored T, float32."

    def recipe(self, provenance):
        return ['targets = column("probs", np.float32)']


def test_a_new_target_kind_generates_and_trains(tmp_path, sources):
    from train.stream import StreamSource
    from transferset.generate import GenerateConfig, run_generate
    from transferset.inputs import InputSpec

    codecs.register(ProbsCodec())
    try:
        spec = InputSpec(columns=("pixels",), shape=(1, 8, 8), scale=1 / 16)
        cfg = GenerateConfig(teachers=[teachers.TeacherSpec("teacher_models:tiny_a")], sources=[str(sources[0])], input_spec=spec,
                             out=tmp_path / "probs", target_kind="probs", temperature=2.0, quiet=True)
        run_generate(cfg)
        _cli("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *PIXELS, "-T", "2",
             "--storage-dtype", "float32", "--out", tmp_path / "dense")
        stream = StreamSource.open_transfer_set(tmp_path / "probs")
        batch = next(iter(stream.epoch(batch_size=517, seed=0, epoch=0, shuffle=False)))
        dense = StreamSource.open_transfer_set(tmp_path / "dense")
        reference = next(iter(dense.epoch(batch_size=517, seed=0, epoch=0, shuffle=False)))
        np.testing.assert_allclose(torch.softmax(batch.target_logits / 2, -1), torch.softmax(reference.target_logits / 2, -1),
                                   rtol=1e-5, atol=1e-7)
        _cli("train", "--transfer", tmp_path / "probs", "--student-arg", "hidden=8", "--epochs", "1", "--batch-size", "64",
             "--out", tmp_path / "run")
        assert (tmp_path / "run" / "student.pt2").is_file()
        refused = io.StringIO()
        with contextlib.redirect_stderr(refused), contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["train", "--transfer", str(tmp_path / "probs"), "--loss", "mse", "--out", str(tmp_path / "run2"), "--quiet"])
        assert code == 2 and "probs" in refused.getvalue() and "kd" in refused.getvalue()
    finally:
        codecs.unregister(ProbsCodec.kind)
    with contextlib.redirect_stderr(refused := io.StringIO()):
        assert cli.main(["inspect", str(tmp_path / "probs")]) == 2
    assert "target kind 'probs' is unknown" in refused.getvalue()


# -- a new loss: one function + register_loss() naming the kinds it applies to -------------------


def total_variation(student_logits, targets, temperature):
    """T^2 * mean over rows of 0.5 * sum |p_T - q_T| (a bounded alternative to KL)."""
    p = torch.softmax(targets["target_logits"] / temperature, dim=-1)
    q = torch.softmax(student_logits.float() / temperature, dim=-1)
    return temperature**2 * 0.5 * (p - q).abs().sum(dim=-1).mean()


def test_a_new_loss_trains_and_is_what_it_says(tmp_path, sources):
    from train.losses import distillation_loss, register_loss, unregister_loss

    _cli("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *PIXELS, "-T", "2", "--out", tmp_path / "set")
    register_loss("tv", total_variation)
    try:
        s, t = torch.randn(5, 10), torch.randn(5, 10)
        loss, parts = distillation_loss(s, {"target_logits": t}, torch.full((5,), -1), alpha=1.0, temperature=2.0, kind="tv")
        p, q = _np_softmax(t.numpy() / 2), _np_softmax(s.numpy() / 2)
        np.testing.assert_allclose(float(loss), 4 * 0.5 * np.abs(p - q).sum(-1).mean(), rtol=1e-5)
        _cli("train", "--transfer", tmp_path / "set", "--loss", "tv", "--alpha", "1", "--student-arg", "hidden=8", "--epochs", "1",
             "--batch-size", "64", "--out", tmp_path / "run")
    finally:
        unregister_loss("tv")
    assert (tmp_path / "run" / "student.pt2").is_file()


# -- a new student: a factory function, named on the command line (no registry) ----------------


def two_layer_student(num_classes, input_shape, width=16):
    import math

    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(math.prod(input_shape), int(width)), torch.nn.ReLU(),
                               torch.nn.Linear(int(width), num_classes))


def test_a_new_student(tmp_path, sources):
    _cli("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *PIXELS, "--out", tmp_path / "set")
    _cli("train", "--transfer", tmp_path / "set", "--student", "test_extension_points:two_layer_student", "--student-arg", "width=12",
         "--epochs", "1", "--batch-size", "64", "--out", tmp_path / "run")
    state = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert state["1.weight"].shape == (12, 64)
