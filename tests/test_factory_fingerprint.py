"""A factory teacher is fingerprinted by its code as well as its weights: a factory
edited between two runs of one set is a different configuration, named in the refusal
(hardening issue, item 3). The set is left unfinished by running writer 0 of 2."""

import textwrap

from conftest import run_cli

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--shard-rows", "200",
        "--num-writers", "2", "--quiet"]
FACTORY = """
import torch

def teacher():
    torch.manual_seed({seed})
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
"""


def _generate(tmp_path, code_dir, source, writer, out):
    return run_cli("generate", "--teacher", "edited_teacher:teacher", "--source", source, *BASE, "--writer-index", writer,
                   "--out", out, cwd=code_dir)


def test_a_factory_whose_code_changed_is_a_different_configuration(tmp_path, sources):
    code_dir = tmp_path / "code"
    code_dir.mkdir()
    module = code_dir / "edited_teacher.py"
    module.write_text(textwrap.dedent(FACTORY.format(seed=0)))
    for out in (tmp_path / "same", tmp_path / "edited"):
        first = _generate(tmp_path, code_dir, sources[0], 0, out)
        assert first.returncode == 0, first.stderr
    finished = _generate(tmp_path, code_dir, sources[0], 1, tmp_path / "same")  # same code: the set completes
    assert finished.returncode == 0 and (tmp_path / "same" / "_manifest.json").exists(), finished.stderr

    module.write_text(textwrap.dedent(FACTORY.format(seed=1)))  # same name, same shapes, other weights in code
    refused = _generate(tmp_path, code_dir, sources[0], 1, tmp_path / "edited")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr
    assert "different configuration (changed: the teachers" in refused.stderr
    assert not (tmp_path / "edited" / "_manifest.json").exists()
