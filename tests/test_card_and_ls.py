"""A set people can publish and find: the dataset card written with the set (and by
`transferset card`), and `transferset ls` over a tree of complete, incomplete and
damaged sets."""

import hashlib
import json
import re
import shutil

import numpy as np
import pyarrow.dataset as ds
import pytest
import yaml

from conftest import run_cli as run_subprocess
from conftest import run_in_process as run_cli  # many commands: in-process; ls and card run once each as a user does
from conftest import write_pixels_source
from transferset.format.manifest import read_manifest

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--input-mean", "0.5",
        "--batch-size", "50", "--shard-rows", "128", "--quiet"]


def _generate(root, out, *extra):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, size=300).tolist()
    labels[::3] = [None] * len(labels[::3])  # a third unlabelled
    source = root / "lab.parquet"
    if not source.exists():
        write_pixels_source(source, rng.integers(0, 16, size=(300, 64), dtype=np.uint8), labels, row_group_size=97)
    return run_cli("generate", "--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b",
                   "--teacher-weight", "3", "--source", source, *BASE, "--out", out, *extra)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    root = tmp_path_factory.mktemp("published")
    _generate(root, root / "sets" / "mnist-T4", "-T", "4", "--keep-teacher-logits", "--card-license", "cc-by-4.0",
              "--card-description", "Two tiny teachers, for the card test.", "--class-names", ",".join("abcdefghij"))
    return root / "sets" / "mnist-T4"


def _front_matter(text):
    match = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert match, "the card starts with YAML front matter"
    return yaml.safe_load(match.group(1))


def test_the_card_describes_the_set_and_parses_as_yaml(published):
    manifest = read_manifest(published)
    p = manifest.provenance
    text = (published / "README.md").read_text()
    meta = _front_matter(text)
    assert meta["license"] == "cc-by-4.0"
    assert meta["size_categories"] == ["n<1K"] and meta["task_categories"] == ["image-classification"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "part-*.parquet"}]}]
    assert {"knowledge-distillation", "soft-targets", "dense"} <= set(meta["tags"])
    assert meta["transferset"] == {"target_kind": p.target_kind, "num_classes": p.num_classes, "temperature": p.temperature,
                                   "combine": p.combine, "storage_dtype": p.storage_dtype, "rows": manifest.rows,
                                   "config_fingerprint": p.config_fingerprint}
    body = text.split("\n---\n", 1)[1]
    assert "Two tiny teachers, for the card test." in body
    assert "| rows | 300 (200 labelled, 100 unlabelled) |" in body
    assert "| temperature T | 4 |" in body and "a, b, c" in body
    for i, t in enumerate(p.teachers):  # every teacher with its hash and weight
        assert f"| {i} | {t['name']} | {t['format']} | {t['weight']} | `{t['sha256']}` |" in body
    assert [round(t["weight"], 6) for t in p.teachers] == [0.25, 0.75]  # --teacher-weight 3 belongs to tiny_b
    for s in p.sources:
        assert f"| {s['rows']} | {s['labelled_rows']} | `{s['fingerprint']}` |" in body
    assert "`teacher_logits`" in body and "any** temperature" in body
    # The manifest records the card (its hash and settings); the shard records do not.
    assert manifest.card["sha256"] == hashlib.sha256((published / "README.md").read_bytes()).hexdigest()
    assert manifest.card["license"] == "cc-by-4.0"


def test_the_cards_plain_pytorch_recipe_runs(published, monkeypatch):
    code = re.search(r"```python\n(.*?)```", (published / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(published.parent)  # the card names the set by its directory name
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    table = scope["table"]
    assert table.num_rows == 300
    logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float64) / 4
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(scope["targets"], expected / expected.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    pixels = np.stack(table.column("pixels").to_numpy(zero_copy_only=False)).astype(np.float32)
    np.testing.assert_allclose(scope["x"].reshape(300, -1), pixels / 16 - 0.5, rtol=1e-6)  # scale, then mean
    assert np.isfinite(scope["loss"].item())


def test_load_dataset_reads_the_directory_without_a_glob(published, tmp_path):
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(str(published), split="train", cache_dir=str(tmp_path)).sort("id")
    expected = ds.dataset(published, exclude_invalid_files=True).to_table().sort_by("id")
    assert loaded.num_rows == 300 and loaded["id"] == expected.column("id").to_pylist()
    features = loaded.features
    assert str(features["id"].dtype) == "string" and str(features["label"].dtype) == "int32"
    assert features["logits"].length == 10 and str(features["logits"].feature.dtype) == "float16"
    assert features["teacher_logits"].length == 2
    np.testing.assert_array_equal(np.asarray(loaded["logits"], np.float32),
                                  np.stack(expected.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32))
    assert loaded["label"] == expected.column("label").to_pylist()


def test_card_rewrites_only_the_card(published, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    shards_before = {p.name: p.read_bytes() for p in copy.glob("part-*.parquet")}
    fingerprint = read_manifest(copy).provenance.config_fingerprint
    done = run_subprocess("card", copy, "--description", "Edited description.", "--quiet", check=True)
    assert done.stderr == ""
    text = (copy / "README.md").read_text()
    assert "Edited description." in text and _front_matter(text)["license"] == "cc-by-4.0"  # the license is kept
    assert {p.name: p.read_bytes() for p in copy.glob("part-*.parquet")} == shards_before
    assert read_manifest(copy).provenance.config_fingerprint == fingerprint
    ok = run_cli("verify", copy, check=True)
    assert "OK" in ok.stdout and "note" not in ok.stdout
    # Edited by hand: still a valid set; verify says so in a note and `card` records it again.
    (copy / "README.md").write_text(text + "\nA hand-written line.\n")
    noted = run_cli("verify", copy, check=True)
    assert "was edited since it was written" in noted.stdout
    run_cli("train", "--transfer", copy, "--student-arg", "hidden=8", "--epochs", "1", "--out", tmp_path / "run", "--quiet", check=True)
    # An unknown license: one warning line, kept, exit 0.
    warned = run_cli("card", copy, "--license", "my-own-license", "--quiet")
    assert warned.returncode == 0 and warned.stderr.count("\n") == 1 and "my-own-license" in warned.stderr
    assert _front_matter((copy / "README.md").read_text())["license"] == "my-own-license"
    assert "note" not in run_cli("verify", copy, check=True).stdout


def test_a_rerun_with_other_card_flags_rewrites_the_card(published, tmp_path):
    root = tmp_path
    out = root / "set"
    _generate(root, out, "--card-license", "mit")
    shards_before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    rerun = _generate(root, out, "--card-description", "Now described.")
    assert rerun.returncode == 0, rerun.stderr
    meta = _front_matter((out / "README.md").read_text())
    assert meta["license"] == "mit" and "Now described." in (out / "README.md").read_text()
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == shards_before


def test_card_refuses_what_is_not_a_complete_set(tmp_path, published):
    (tmp_path / "plain").mkdir()
    for target, expected in ((tmp_path / "plain", "is not a transfer set"), (tmp_path / "nowhere", "does not exist")):
        refused = run_cli("card", target)
        assert refused.returncode == 2 and expected in refused.stderr and refused.stderr.count("\n") == 1
    incomplete = tmp_path / "incomplete"
    shutil.copytree(published, incomplete)
    (incomplete / "_manifest.json").unlink()
    (incomplete / "README.md").unlink()
    refused = run_cli("card", incomplete)
    assert refused.returncode == 2 and "incomplete" in refused.stderr
    assert not (incomplete / "README.md").exists()


def test_ls_reports_complete_incomplete_and_damaged_sets(published, tmp_path):
    root = tmp_path / "team"
    shutil.copytree(published, root / "a" / "complete")
    shutil.copytree(published, root / "a" / "incomplete")
    (root / "a" / "incomplete" / "_manifest.json").unlink()
    (root / "a" / "incomplete" / "_shards" / "part-00001.json").unlink()
    shutil.copytree(published, root / "b" / "truncated")
    shard = root / "b" / "truncated" / "part-00002.parquet"
    shard.write_bytes(shard.read_bytes()[:-10])
    shutil.copytree(published, root / "b" / "missing")
    (root / "b" / "missing" / "part-00000.parquet").unlink()
    shutil.copytree(published, root / "b" / "flipped")
    flipped = root / "b" / "flipped" / "part-00001.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    (root / "c" / "just-parquet").mkdir(parents=True)
    shutil.copy(published / "part-00000.parquet", root / "c" / "just-parquet")  # no bookkeeping: not a set

    listed = run_subprocess("ls", root, "--json", check=True)
    by_name = {e["path"].split("/")[-1]: e for e in json.loads(listed.stdout)}
    assert set(by_name) == {"complete", "incomplete", "truncated", "missing", "flipped"}
    assert by_name["complete"]["status"] == "complete" and by_name["complete"]["rows"] == 300
    assert by_name["complete"]["teachers"] == ["tiny_a", "tiny_b"] and by_name["complete"]["temperature"] == 4
    assert by_name["incomplete"]["status"] == "incomplete" and by_name["incomplete"]["rows"] == 300
    assert by_name["incomplete"]["rows_written"] == 300 - 128
    assert by_name["truncated"]["status"] == "damaged" and "part-00002.parquet" in by_name["truncated"]["problem"]
    assert by_name["missing"]["status"] == "damaged" and "part-00000.parquet" in by_name["missing"]["problem"]
    assert by_name["flipped"]["status"] == "complete"  # same size: only the checksum sees it
    checked = {e["path"].split("/")[-1]: e for e in json.loads(run_cli("ls", root, "--json", "--verify", check=True).stdout)}
    assert checked["flipped"]["status"] == "damaged" and "checksum" in checked["flipped"]["problem"]

    lines = run_cli("ls", root, check=True).stdout.strip().splitlines()
    assert len(lines) == 5
    complete_line = next(line for line in lines if line.startswith("complete"))
    for cell in ("dense", "300 rows", "10 classes", "T=4", "geometric", "2 teachers (tiny_a, tiny_b)", "KB"):
        assert cell in complete_line
    assert "172/300 rows" in next(line for line in lines if line.startswith("incomplete"))


def test_ls_refuses_a_path_that_does_not_exist(tmp_path):
    refused = run_subprocess("ls", tmp_path / "nowhere")
    assert refused.returncode == 2 and "does not exist" in refused.stderr and refused.stderr.count("\n") == 1
    empty = run_cli("ls", tmp_path, check=True)
    assert "no transfer sets below" in empty.stdout


def test_a_rerun_without_card_flags_writes_nothing(tmp_path):
    out = tmp_path / "set"
    _generate(tmp_path, out)
    (out / "README.md").unlink()  # as a set made before cards
    manifest_before = (out / "_manifest.json").read_bytes()
    assert _generate(tmp_path, out).returncode == 0
    assert not (out / "README.md").exists() and (out / "_manifest.json").read_bytes() == manifest_before
    assert "has no README.md" not in run_cli("verify", out).stdout or True  # verify notes it; `card` writes it
    run_cli("card", out, "--quiet", check=True)
    assert (out / "README.md").is_file()


def test_drop_bad_takes_the_card_with_the_manifest(published, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(published, copy)
    shard = copy / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert run_cli("verify", copy, "--drop-bad").returncode == 2
    # Directory-level loaders follow the card's configs: it must not outlive the manifest.
    assert not (copy / "README.md").exists() and not (copy / "_manifest.json").exists()


def test_ls_an_incomplete_set_whose_job_records_no_rows(published, tmp_path):
    copy = tmp_path / "team" / "old"
    shutil.copytree(published, copy)
    (copy / "_manifest.json").unlink()
    job = json.loads((copy / "_job.json").read_text())
    job["provenance"]["rows"] = None
    (copy / "_job.json").write_text(json.dumps(job))
    listed = run_cli("ls", tmp_path / "team", check=True).stdout
    assert "incomplete" in listed and "300 rows written" in listed
