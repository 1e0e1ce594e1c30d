"""`transferset recombine`: exact against `generate`, geometric re-tempering without
member logits, resume, and the refusals (one line, exit 2, nothing written)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from conftest import run_cli, write_pixels_source
from transferset.combine import combine, normalised_weights
from transferset.format.manifest import read_manifest
from transferset.format.provenance import FINGERPRINTED, Provenance, fingerprint
from transferset.format.schema import METADATA_KEY
from transferset.recombine import RecombineConfig, open_source
from transferset.recombine.plan import make_plan

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "50",
        "--shard-rows", "128", "--row-group-rows", "40"]
A, B, C = "teacher_models:tiny_a", "teacher_models:tiny_b", "recombine_teachers:tiny_c"


def cli(*argv) -> tuple[int, str]:
    """`transferset ARGV` in this process: (exit code, stderr)."""
    import cli as entry

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        code = entry.main([str(a) for a in argv])
    return code, err.getvalue()


def generate(source, out, teachers, *flags):
    """`generate` over the module's source; a teacher is a factory name or (name, weight)."""
    members = [a for t in teachers for a in (["--teacher", t] if isinstance(t, str) else ["--teacher", t[0], "--teacher-weight", t[1]])]
    code, err = cli("generate", *members, "--source", source, *BASE, *flags, "--out", out, "--quiet")
    assert code == 0, err
    return out


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """A 3-member float32 set with member logits, a float16 one, and a geometric one without."""
    root = tmp_path_factory.mktemp("recombine")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=301).tolist()
    for i in range(0, 301, 50):
        labels[i] = None
    source = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, size=(301, 64), dtype=np.uint8), labels, row_group_size=97)
    return {
        "source": source,
        "f32": generate(source, root / "f32", [A, B, C], "--storage-dtype", "float32", "--keep-teacher-logits", "-T", "4"),
        "f16": generate(source, root / "f16", [A, B, C], "--keep-teacher-logits", "-T", "4"),
        "geo": generate(source, root / "geo", [A, B], "-T", "4"),
    }


def shards(directory):
    return [pq.ParquetFile(p) for p in read_manifest(directory).shard_paths()]


def column(directory, name) -> np.ndarray:
    """Every value of a float column across the set, flattened, in the stored dtype."""
    parts = []
    for path in read_manifest(directory).shard_paths():
        values = pq.read_table(path, columns=[name])[name].combine_chunks()
        while pa.types.is_fixed_size_list(values.type):
            values = values.flatten()
        parts.append(values.to_numpy(zero_copy_only=False))
    return np.concatenate(parts)


def assert_same_rows(a, b, *names):
    for x, y in zip(shards(a), shards(b), strict=True):
        assert [x.metadata.row_group(i).num_rows for i in range(x.num_row_groups)] == \
               [y.metadata.row_group(i).num_rows for i in range(y.num_row_groups)]
        left, right = x.read(), y.read()
        assert left.schema.remove_metadata() == right.schema.remove_metadata()
        for name in names:
            assert left[name].equals(right[name]), name


def test_arithmetic_subset_equals_generate_bit_for_bit(sets, tmp_path):
    """float32 members: recombine == generate with teachers 0 and 2, T=3, weights 1:3 (the issue's test)."""
    out = tmp_path / "am"
    proc = run_cli("recombine", sets["f32"], "--combine", "arithmetic", "--temperature", "3", "--members", "0,2",
                   "--weights", "1,3", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "from the members' logits" in proc.stderr
    direct = generate(sets["source"], tmp_path / "direct", [(A, "1"), (C, "3")], "--storage-dtype", "float32", "--keep-teacher-logits",
                      "--combine", "arithmetic", "-T", "3")
    assert_same_rows(out, direct, "id", "source", "label", "pixels", "logits", "teacher_logits")
    assert column(out, "logits").view(np.uint32).tolist() == column(direct, "logits").view(np.uint32).tolist()

    prov, want, src = read_manifest(out).provenance, read_manifest(direct).provenance, read_manifest(sets["f32"]).provenance
    assert (prov.combine, prov.temperature, prov.teacher_logits_kept) == ("arithmetic", 3.0, True)
    keys = ("name", "sha256", "weight", "format")
    assert [{k: t[k] for k in keys} for t in prov.teachers] == [{k: t[k] for k in keys} for t in want.teachers]
    assert prov.recombined_from["config_fingerprint"] == src.config_fingerprint
    assert prov.recombined_from["members"] == [0, 2]
    assert set(prov.recombined_from["changed"]) == {"combine", "temperature", "members", "weights"}
    assert prov.recombined_from["changed"]["temperature"] == {"from": 4.0, "to": 3.0}
    for path in read_manifest(out).shard_paths():  # every shard's footer carries the new provenance
        assert json.loads(pq.read_schema(path).metadata[METADATA_KEY]) == prov.encode()
    assert cli("verify", out)[0] == 0
    # Published like a generated set: a card, keeping the source's settings (license, ...).
    assert (out / "README.md").is_file() and read_manifest(out).card["license"] == read_manifest(sets["f32"]).card["license"]


def test_float16_members_differ_within_the_documented_bound(sets, tmp_path):
    """float16 kept members are rounded before combining (docs/format.md, "Recombine"): each
    stored target logit is within 2^-8 * max|member logit| + one float16 ulp of generate's."""
    out = tmp_path / "am16"
    assert cli("recombine", sets["f16"], "--combine", "arithmetic", "-T", "3", "--members", "0,2", "--out", out, "-q")[0] == 0
    direct = generate(sets["source"], tmp_path / "direct16", [A, C], "--keep-teacher-logits", "--combine", "arithmetic", "-T", "3")
    assert_same_rows(out, direct, "id", "label", "pixels", "teacher_logits")
    got, want = column(out, "logits").astype(np.float64), column(direct, "logits").astype(np.float64)
    members = column(direct, "teacher_logits").astype(np.float64).reshape(len(got) // 10, 2, 10)
    scale = np.abs(members).max(axis=(1, 2)).repeat(10)
    ulp = np.spacing(np.maximum(np.abs(got), np.abs(want)).astype(np.float16)).astype(np.float64)
    assert (np.abs(got - want) <= 2.0**-8 * scale + ulp).all()
    assert (got != want).any()  # the fixture does exercise the rounding (27% of its values differ, by <= 1 ulp)


def test_geometric_retemper_needs_no_member_logits(sets, tmp_path):
    """A geometric set's stored targets are valid at every T: copied, equal to generate at the new T."""
    out = tmp_path / "geo8"
    code, err = cli("recombine", sets["geo"], "--temperature", "8", "--out", out)
    assert code == 0 and "re-tempered from the stored targets" in err, err
    direct = generate(sets["source"], tmp_path / "direct8", [A, B], "-T", "8")
    assert_same_rows(out, direct, "id", "source", "label", "pixels", "logits")
    prov = read_manifest(out).provenance
    assert prov.temperature == 8.0 and prov.combine == "geometric" and not prov.teacher_logits_kept
    assert prov.recombined_from["changed"] == {"temperature": {"from": 4.0, "to": 8.0}}
    # Anything else needs the members: a clear refusal naming the fix, and nothing written.
    refused = tmp_path / "geo-am"
    code, err = cli("recombine", sets["geo"], "--combine", "arithmetic", "--out", refused)
    assert code == 2 and "regenerate it with --keep-teacher-logits" in err and err.count("\n") == 1
    assert not refused.exists()


def test_rerun_resume_and_other_configuration(sets, tmp_path):
    out = tmp_path / "geo2"
    args = ["recombine", sets["f32"], "--combine", "geometric", "--members", "1,2", "--out", out]
    assert cli(*args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.glob("*.parquet")}
    code, err = cli(*args)
    assert code == 0 and "already complete" in err
    # A killed run: the manifest and the last shard (and its record) gone; the rerun redoes just that one.
    (out / "_manifest.json").unlink()
    (out / "part-00002.parquet").unlink()
    (out / "_shards" / "part-00002.json").unlink()
    (out / ".part-00002.parquet.tmp-99999").write_bytes(b"half")
    code, err = cli(*args)
    assert code == 0 and "resuming: 2 of 3 shards already written" in err, err
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    assert not list(out.glob(".part-*"))
    code, err = cli(*args[:-2], "-T", "2", "--out", out)
    assert code == 2 and "different configuration (changed: --temperature)" in err
    assert {p.name: p.read_bytes() for p in out.glob("*.parquet")} == before
    assert cli(*args[:-2], "-T", "2", "--out", out, "--overwrite")[0] == 0
    assert read_manifest(out).temperature == 2.0
    # Recombining a recombined set: its kept members are the chosen two.
    again = tmp_path / "again"
    assert cli("recombine", out, "--members", "1", "--out", again, "-q")[0] == 0
    assert [t["name"] for t in read_manifest(again).provenance.teachers] == [read_manifest(sets["f32"]).provenance.teachers[2]["name"]]


def _damaged(src, tmp_path):
    copy = shutil.copytree(src, tmp_path / "damaged")
    shard = copy / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    return copy


def _incomplete(src, tmp_path):
    copy = shutil.copytree(src, tmp_path / "incomplete")
    (copy / "_manifest.json").unlink()
    return copy


@pytest.mark.parametrize("case, flags, message", [
    ("out of range", ["--members", "0,3"], "--members 3 is out of range: "),
    ("empty subset", ["--members", ""], "--members names no member; give at least one index"),
    ("not indices", ["--members", "0,b"], "--members '0,b' must be comma-separated member indices"),
    ("twice", ["--members", "1,1"], "names a member twice"),
    ("unknown combine", ["--combine", "median"], "unknown --combine 'median'; use arithmetic or geometric"),
    ("specialists", ["--combine", "specialists"], "--combine specialists needs models no set keeps the logits of"),
    ("weights count", ["--members", "0,2", "--weights", "1,2,3"], "--weights has 3 numbers but --members names 2; give one weight per member"),
    ("negative weight", ["--weights", "1,-1,1"], "must be non-negative numbers with a positive sum"),
    ("bad temperature", ["-T", "0"], "--temperature must be a positive number"),
    ("damaged source", _damaged, "checksum mismatch"),
    ("incomplete source", _incomplete, "is incomplete (no _manifest.json)"),
    ("out not a set", "not-a-set", "exists and is not a transfer set; choose another directory"),
    ("out is the source", "source", "is or contains the source set"),
])
def test_refusals_are_one_line_and_write_nothing(sets, tmp_path, case, flags, message):
    source, out = sets["f32"], tmp_path / "out"
    if callable(flags):
        source, flags = flags(sets["f32"], tmp_path), []
    elif flags == "not-a-set":
        out.mkdir()
        (out / "keep.txt").write_text("mine\n")
        flags = []
    elif flags == "source":
        out, flags = sets["f32"], []
    before = sorted(p.name for p in out.iterdir()) if out.exists() else None
    code, err = cli("recombine", source, *flags, "--out", out)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert (sorted(p.name for p in out.iterdir()) if out.exists() else None) == before


def test_refusal_through_a_fresh_interpreter(sets, tmp_path):
    proc = run_cli("recombine", sets["f32"], "--members", "5", "--out", tmp_path / "out")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "has 3 members (indices 0 to 2)" in proc.stderr
    assert not (tmp_path / "out").exists()


# -- units ---------------------------------------------------------------------------------


def test_plan_weights_and_mode(sets, tmp_path):
    source = open_source(sets["f32"])
    plan = make_plan(RecombineConfig(sets["f32"], tmp_path / "o", members=[0, 2]), source)
    assert plan.from_members and plan.weights.tolist() == [0.5, 0.5]  # equal weights stay equal over a subset
    assert make_plan(RecombineConfig(sets["f32"], tmp_path / "o", temperature=9.0), source).from_members is False
    same = make_plan(RecombineConfig(sets["f32"], tmp_path / "o", weights=[2, 2, 2], temperature=9.0), source)
    assert not same.from_members  # the same weights, normalised: still a pure re-temper
    arithmetic = make_plan(RecombineConfig(sets["f32"], tmp_path / "o", combine="arithmetic"), source)
    assert arithmetic.from_members  # arithmetic targets depend on T and on the mix: from the members
    assert plan.provenance.config_fingerprint != arithmetic.provenance.config_fingerprint


def test_slicing_the_combine_changes_no_bit(sets, tmp_path, monkeypatch):
    from transferset.recombine import shard

    args = ["--members", "0,2", "--combine", "arithmetic", "-T", "3", "--weights", "1,3", "-q"]
    assert cli("recombine", sets["f32"], *args, "--out", tmp_path / "whole")[0] == 0
    monkeypatch.setattr(shard, "COMBINE_ROWS", 7)  # row groups of 40 and 10 rows: slices of 7, 7, ..., 5
    assert cli("recombine", sets["f32"], *args, "--out", tmp_path / "sliced")[0] == 0
    assert column(tmp_path / "whole", "logits").view(np.uint32).tolist() == column(tmp_path / "sliced", "logits").view(np.uint32).tolist()


def test_member_logits_of_sliced_columns():
    """Offsets at both list levels (a sliced table, a column built on a sliced child) are honoured."""
    from transferset.recombine.shard import member_logits

    z = np.arange(7 * 3 * 4).astype(np.float16).reshape(7, 3, 4)  # (rows, K, C)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(z.reshape(-1)), 4)  # 21 member rows
    table = pa.table({"teacher_logits": pa.FixedSizeListArray.from_arrays(inner.slice(3), 3)}).slice(2, 3)  # rows 3..5 of z
    got = member_logits(table, 3, 4, "here")
    assert got.dtype == torch.float16 and got.numpy().tolist() == z[3:6].transpose(1, 0, 2).tolist()


def test_members_combined_as_generate_combines():
    """The member path is combine() on the chosen rows, against a NumPy float64 reference."""
    rng = np.random.default_rng(1)
    z = rng.standard_normal((3, 5, 4)).astype(np.float32) * 4
    w = normalised_weights([1.0, 3.0], 2)
    s = combine(torch.from_numpy(z)[[0, 2]], "arithmetic", 3.0, w).double().numpy()

    def softmax(x):
        e = np.exp(x - x.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    want = 0.25 * softmax(z[0].astype(np.float64) / 3) + 0.75 * softmax(z[2].astype(np.float64) / 3)
    np.testing.assert_allclose(softmax(s / 3), want, rtol=1e-5, atol=1e-7)


def test_older_sets_keep_their_fingerprint_and_bytes():
    """recombined_from is absent (not null) from a generated set's provenance and resume key."""
    prov = Provenance(target_kind="dense", num_classes=3, temperature=2.0, combine="geometric", storage_dtype="float16",
                      teachers=[{"name": "t"}], sources=[{"path": "s"}], input={"columns": ["x"], "shape": [2]})
    assert "recombined_from" not in prov.encode()
    assert Provenance.decode(prov.encode(), "here") == prov
    values = {name: getattr(prov, name) for name in FINGERPRINTED if name != "recombined_from"}
    assert fingerprint(values) == fingerprint({**values, "recombined_from": None})
    assert fingerprint(values) != fingerprint({**values, "recombined_from": {"config_fingerprint": "x"}})
