"""A teacher file is data: a crafted `.pt2` or TorchScript archive must not run code
(hardening issue, item 1). Each attack is first shown to work against a bare
`torch.export.load`, so the test fails if our check stops catching it."""

import json
import pickle
import zipfile

import pytest
import torch

from conftest import run_cli
from transferset.teachers.archives import safe_graph_target, safe_guard, unsafe_export_parts, unsafe_torchscript_parts

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]


class _WritesMarker:
    """A pickle whose loading runs `open(marker, 'w')`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _rewrite(src, dst, edit):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))
    return dst


@pytest.fixture
def exported(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    program = torch.export.export(model, (torch.zeros(4, 1, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "good.pt2"
    torch.export.save(program, str(path))
    return path


def _pickled_weight(marker):
    def edit(name, data):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            config["config"]["1.bias"]["use_pickle"] = True
            return json.dumps(config).encode()
        return pickle.dumps(_WritesMarker(marker)) if name.endswith("weights/weight_1") else data

    return edit


def _pickled_sample_inputs(marker):
    return lambda name, data: pickle.dumps(_WritesMarker(marker)) if name.endswith("sample_inputs/model.pt") else data


def _evaluated_shape(marker):
    def edit(name, data):
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        values = program["graph_module"]["graph"]["tensor_values"].values()
        batch = next(v["sizes"][0]["as_expr"] for v in values if "as_expr" in v["sizes"][0])  # the dynamic batch size
        batch["expr_str"] = batch["expr_str"].replace("positive=True", f"positive=(exec(\"open('{marker}', 'w')\") is None)")
        return json.dumps(program).encode()

    return edit


ATTACKS = {"pickled weight": _pickled_weight, "pickled sample inputs": _pickled_sample_inputs, "evaluated shape": _evaluated_shape}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_crafted_pt2_is_refused_before_it_runs_code(tmp_path, sources, exported, attack):
    marker = tmp_path / "marker"
    evil = _rewrite(exported, tmp_path / "evil.pt2", ATTACKS[attack](marker))
    # The attack is real: torch's own loader runs the payload.
    try:
        torch.export.load(str(evil))
    except Exception:
        pass
    assert marker.exists(), f"{attack}: the crafted archive no longer runs code under torch.export.load"
    marker.unlink()

    proc = run_cli("generate", "--teacher", evil, "--source", sources[0], *BASE, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "--trust-checkpoint" in proc.stderr and "run code" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "out" / "_manifest.json").exists()


def test_our_own_exports_load_without_trust(tmp_path, sources, exported):
    assert unsafe_export_parts(str(exported)) == []
    run_cli("generate", "--teacher", exported, "--source", sources[0], *BASE, "--out", tmp_path / "out", "--quiet", check=True)


def test_trust_checkpoint_lets_a_file_through(tmp_path, sources, exported):
    """With --trust-checkpoint the archive goes to torch as it is (here: its sample
    inputs are a harmless pickle of a tuple subclass that weights_only refuses)."""
    import io

    import teacher_models

    buffer = io.BytesIO()
    torch.save(teacher_models.PickledTuple(((torch.zeros(4, 1, 8, 8),), {})), buffer)
    evil = _rewrite(exported, tmp_path / "trusted.pt2",
                    lambda name, data: buffer.getvalue() if name.endswith("sample_inputs/model.pt") else data)
    refused = run_cli("generate", "--teacher", evil, "--source", sources[0], *BASE, "--out", tmp_path / "a")
    assert refused.returncode == 2 and "--trust-checkpoint" in refused.stderr
    run_cli("generate", "--teacher", evil, "--source", sources[0], *BASE, "--trust-checkpoint", "--out", tmp_path / "b", "--quiet", check=True)


def test_a_crafted_torchscript_archive_is_refused(tmp_path, sources):
    marker = tmp_path / "marker"
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    good = tmp_path / "good.ts"
    scripted.save(str(good))
    assert unsafe_torchscript_parts(str(good)) == []
    evil = _rewrite(good, tmp_path / "evil.ts", lambda name, data: pickle.dumps(_WritesMarker(marker)) if name.endswith("/data.pkl") else data)
    assert unsafe_torchscript_parts(str(evil))
    proc = run_cli("generate", "--teacher", evil, "--source", sources[0], *BASE, "--out", tmp_path / "out")
    assert proc.returncode == 2 and "--trust-checkpoint" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not marker.exists()


def test_graph_targets_and_guards_that_reach_python_are_refused():
    assert safe_graph_target("torch.ops.aten.linear.default") and safe_graph_target("_operator.floordiv") and safe_graph_target("torch.sym_max")
    for bad in ("torch.os.system", "torch.ops.load_library", "_operator.methodcaller", "builtins.exec", "torch.ops.aten.__class__.x"):
        assert not safe_graph_target(bad), bad
    assert safe_guard("max(1, 4*(L['x'].size()[0] // 2)) == 4")
    for bad in ("L['x'].__class__", "__import__('os').system('x')", "exec('x')", "L['x'].size()[0] == 1; import os"):
        assert not safe_guard(bad), bad


def test_review_findings_stay_closed(tmp_path, exported):
    """Ways past an earlier version of the check, found in review: sympy's S() looks
    names up with the builtins in reach; a string is code to Integer('...'); a graph
    argument `as_operator` is resolved like a target; a name stored twice in the zip
    is read differently by Python and by torch."""
    from transferset.teachers.archives import _safe_sympy

    assert not _safe_sympy("S('exec')(S('chr')(112))") and not _safe_sympy("Integer('exec')")
    assert _safe_sympy("Mul(Integer(2), Symbol('s65', positive=True, integer=True))")

    def operator_arg(name, data):
        if not name.endswith("models/model.json"):
            return data
        program = json.loads(data)
        program["graph_module"]["graph"]["nodes"][0]["inputs"].append({"name": "f", "arg": {"as_operator": "torch.os.system"}, "kind": 1})
        return json.dumps(program).encode()

    assert any("torch.os.system" in p for p in unsafe_export_parts(str(_rewrite(exported, tmp_path / "op.pt2", operator_arg))))
    twice = tmp_path / "twice.pt2"
    with zipfile.ZipFile(exported) as zin, zipfile.ZipFile(twice, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
        with pytest.warns(UserWarning):  # zipfile warns about the duplicate name: that is the attack
            zout.writestr(zin.namelist()[0], b"other bytes")
    assert any("stored twice" in p for p in unsafe_export_parts(str(twice)))
