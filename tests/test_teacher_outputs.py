"""A teacher's output must say which tensor is the logits (issue 14, item 10):
a tensor, `.logits` or a `logits` key are taken as they are; any other tuple,
list or dict is refused, showing its structure, until `--teacher-output KEY|INDEX`
names the element. The factories below are teachers (`test_teacher_outputs:fn`)."""

import json

import numpy as np
import pytest
import torch

from conftest import run_cli
from teacher_models import mlp
from transferset.format.manifest import read_manifest

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--storage-dtype", "float32", "--quiet"]


class _Returns(torch.nn.Module):
    """mlp(11)'s logits wrapped as `kind`, next to their softmax (the wrong target)."""

    def __init__(self, kind: str):
        super().__init__()
        self.inner, self.kind = mlp(11), kind

    def forward(self, x):
        logits = self.inner(x)
        probs = torch.softmax(logits, dim=1)
        if self.kind == "tuple":
            return probs, logits
        if self.kind == "list":
            return [logits, probs]
        if self.kind == "dict":
            return {"probs": probs, "scores": logits}
        if self.kind == "logits-key":
            return {"probs": probs, "logits": logits}
        return _HasLogits(logits, probs)


class _HasLogits:
    def __init__(self, logits, probs):
        self.logits, self.probs = logits, probs


def plain_teacher():
    return mlp(11)


def tuple_teacher():
    return _Returns("tuple")


def list_teacher():
    return _Returns("list")


def dict_teacher():
    return _Returns("dict")


def logits_key_teacher():
    return _Returns("logits-key")


def attribute_teacher():
    return _Returns("attribute")


def _targets(out):
    import pyarrow.parquet as pq

    manifest = read_manifest(out)
    return np.concatenate([np.stack(pq.read_table(out / s.path, columns=["logits"]).column("logits").to_numpy(zero_copy_only=False))
                           for s in manifest.shards])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, request):
    """The targets of the plain-logits teacher, that every correct choice must reproduce."""
    from conftest import write_pixels_source

    root = tmp_path_factory.mktemp("outputs")
    rng = np.random.default_rng(4)
    source = write_pixels_source(root / "s.parquet", rng.integers(0, 16, size=(37, 64), dtype=np.uint8))
    run_cli("generate", "--teacher", "test_teacher_outputs:plain_teacher", "--source", source, *BASE, "--out", root / "plain", check=True)
    return {"source": source, "targets": _targets(root / "plain")}


@pytest.mark.parametrize("factory", ["attribute_teacher", "logits_key_teacher"])
def test_logits_attribute_and_key_are_taken_as_they_are(factory, reference, tmp_path):
    proc = run_cli("generate", "--teacher", f"test_teacher_outputs:{factory}", "--source", reference["source"], *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(_targets(tmp_path / "o"), reference["targets"], atol=1e-6)


@pytest.mark.parametrize("factory, shown, hint", [
    ("tuple_teacher", "returns tuple(Tensor[4, 10] float32, Tensor[4, 10] float32)", "--teacher-output INDEX"),
    ("list_teacher", "returns list(Tensor[4, 10] float32, Tensor[4, 10] float32)", "--teacher-output INDEX"),
    ("dict_teacher", "returns dict(probs: Tensor[4, 10] float32, scores: Tensor[4, 10] float32)", "--teacher-output KEY"),
])
def test_ambiguous_outputs_are_refused_showing_their_structure(factory, shown, hint, reference, tmp_path):
    proc = run_cli("generate", "--teacher", f"test_teacher_outputs:{factory}", "--source", reference["source"], *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert shown in proc.stderr and hint in proc.stderr


@pytest.mark.parametrize("factory, choice", [("tuple_teacher", "1"), ("tuple_teacher", "-1"), ("list_teacher", "0"), ("dict_teacher", "scores")])
def test_teacher_output_names_the_logits(factory, choice, reference, tmp_path):
    out = tmp_path / "o"
    proc = run_cli("generate", "--teacher", f"test_teacher_outputs:{factory}", "--teacher-output", choice,
                   "--source", reference["source"], *BASE, "--out", out)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(_targets(out), reference["targets"], atol=1e-6)
    member = read_manifest(out).provenance.teachers[0]
    assert member["output"] == choice
    assert json.loads((out / "_job.json").read_text())["provenance"]["teachers"][0]["output"] == choice


def test_a_different_teacher_output_is_a_different_configuration(reference, tmp_path):
    out = tmp_path / "o"
    run_cli("generate", "--teacher", "test_teacher_outputs:tuple_teacher", "--teacher-output", "1",
            "--source", reference["source"], *BASE, "--out", out, check=True)
    again = run_cli("generate", "--teacher", "test_teacher_outputs:tuple_teacher", "--teacher-output", "0",
                    "--source", reference["source"], *BASE, "--out", out)
    assert again.returncode == 2 and "different configuration" in again.stderr


@pytest.mark.parametrize("factory, choice, message", [
    ("tuple_teacher", "2", "--teacher-output '2' is not an index of what teacher 'tuple_teacher' returns"),
    ("tuple_teacher", "logits", "give 0 to 1"),
    ("dict_teacher", "logits", "use one of: probs, scores"),
    ("plain_teacher", "0", "returns Tensor[4, 10] float32, not a tuple, list or dict; drop --teacher-output"),
])
def test_a_wrong_teacher_output_is_one_line(factory, choice, message, reference, tmp_path):
    proc = run_cli("generate", "--teacher", f"test_teacher_outputs:{factory}", "--teacher-output", choice,
                   "--source", reference["source"], *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert message in proc.stderr


def test_teacher_output_must_follow_a_teacher(reference, tmp_path):
    proc = run_cli("generate", "--teacher-output", "0", "--teacher", "test_teacher_outputs:tuple_teacher",
                   "--source", reference["source"], *BASE, "--out", tmp_path / "o")
    assert proc.returncode == 2 and "--teacher-output must follow the --teacher it belongs to" in proc.stderr
