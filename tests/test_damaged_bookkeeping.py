"""Damaged, truncated, deeply nested or wrongly typed `_manifest.json`, shard records
and shard metadata: every reader answers with one line and exit 2 (or reads a set
whose damage does not matter), never an internal error (exit 1)."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from conftest import run_cli

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "50", "--shard-rows", "128"]
WRONG = [None, "x", 1.5, -1, True, [], {}, [[[[1]]]]]
DEEP = "[" * 100_000 + "]" * 100_000
NEARLY_TOO_DEEP = '{"a":' * 900 + "1" + "}" * 900


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    import numpy as np

    from conftest import write_pixels_source

    root = tmp_path_factory.mktemp("damaged")
    rng = np.random.default_rng(0)
    lab = write_pixels_source(root / "lab.parquet", rng.integers(0, 16, size=(300, 64), dtype=np.uint8),
                              rng.integers(0, 10, size=300).tolist(), row_group_size=97)
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", lab, *BASE, "--out", root / "ts", "--quiet", check=True)
    return root / "ts"


def _readers(directory, capsys):
    """verify, inspect (in-process, through the CLI entry point) and what train and eval
    open (StreamSource): each must succeed or raise the one-line UserError."""
    from train.stream import StreamSource
    from transferset.commands.main import main
    from transferset.errors import UserError

    for command in ("verify", "inspect"):
        code = main([command, str(directory), "--quiet"] if command == "verify" else [command, str(directory)])
        err = capsys.readouterr().err
        assert code in (0, 2) and "internal error" not in err and len(err.strip().splitlines()) <= 1, (command, err)
    try:
        StreamSource.open_transfer_set(directory)
    except UserError as error:
        assert "\n" not in str(error)


def _variants(text: str, wrong_values=tuple(WRONG)):
    """(name, new text) of a JSON document: truncations, deep nesting, every field of
    every object in it (two levels down) set to each wrong type."""
    for cut in (0, 1, len(text) // 3, len(text) // 2, len(text) - 1):
        yield f"truncated at {cut}", text[:cut]
    yield "nested 100k levels", DEEP
    yield "nested 900 levels", NEARLY_TOO_DEEP
    original = json.loads(text)

    def paths(value, prefix=()):
        if isinstance(value, dict):
            for key, inner in value.items():
                yield (*prefix, key)
                if len(prefix) < 2:
                    yield from paths(inner, (*prefix, key))
        elif isinstance(value, list) and value and len(prefix) < 2:
            yield (*prefix, 0)
            yield from paths(value[0], (*prefix, 0))

    for path in paths(original):
        for wrong in wrong_values:
            doc = json.loads(text)
            target = doc
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = wrong
            yield f"{'.'.join(map(str, path))} = {wrong!r}", json.dumps(doc)
        doc = json.loads(text)
        target = doc
        for key in path[:-1]:
            target = target[key]
        if isinstance(target, dict):
            del target[path[-1]]
            yield f"{'.'.join(map(str, path))} removed", json.dumps(doc)


def test_a_damaged_manifest_is_one_line_for_every_reader(pristine, tmp_path, capsys):
    directory = tmp_path / "ts"
    shutil.copytree(pristine, directory)
    manifest = directory / "_manifest.json"
    text = manifest.read_text()
    tried = 0
    for name, damaged in _variants(text):
        manifest.write_text(damaged)
        try:
            _readers(directory, capsys)
        except AssertionError as error:
            raise AssertionError(f"manifest {name}: {error}") from None
        tried += 1
    assert tried > 150


def test_damaged_shard_records_are_redone_by_generate(pristine, tmp_path):
    """A damaged record is an unfinished shard: never an exception (in-process, every
    kind of damage), and generate redoes that shard (the CLI, once)."""
    from transferset.format.manifest import read_shard_records

    directory = tmp_path / "ts"
    shutil.copytree(pristine, directory)
    (directory / "_manifest.json").unlink()
    record = directory / "_shards" / "part-00001.json"
    text = record.read_text()
    for name, damaged in _variants(text):
        record.write_text(damaged)
        found = read_shard_records(directory)
        assert set(found) <= {0, 1, 2} and {0, 2} <= set(found), name
    record.write_text(DEEP)
    lab = pristine.parent / "lab.parquet"
    proc = run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", lab, *BASE, "--out", directory)
    assert proc.returncode == 0 and "resuming: 2 of 3 shards" in proc.stderr, proc.stderr
    assert run_cli("verify", directory).returncode == 0


def _rewrite_footer(shard, metadata: bytes):
    table = pq.read_table(shard)
    table = table.replace_schema_metadata({b"transferset": metadata})
    pq.write_table(table, shard, row_group_size=97)


def test_damaged_shard_metadata_is_one_line_for_every_reader(pristine, tmp_path, capsys):
    from transferset.io import file_sha256

    directory = tmp_path / "ts"
    shutil.copytree(pristine, directory)
    shard = directory / "part-00000.parquet"
    text = pq.read_schema(shard).metadata[b"transferset"].decode()
    manifest = json.loads((directory / "_manifest.json").read_text())
    variants = [v for v in _variants(text, (None, "x", [], {})) if v[0].split(" ")[0].split(".")[0] in
                ("truncated", "nested", "format", "schema_version", "target_kind", "num_classes", "temperature",
                 "combine", "storage_dtype", "config_fingerprint", "teachers", "input")]
    for name, damaged in variants:
        _rewrite_footer(shard, damaged.encode())
        manifest["shards"][0].update(bytes=shard.stat().st_size, sha256=file_sha256(shard))  # intact by checksum
        (directory / "_manifest.json").write_text(json.dumps(manifest))
        try:
            _readers(directory, capsys)
        except AssertionError as error:
            raise AssertionError(f"shard metadata {name}: {error}") from None
    assert len(variants) > 30


def test_a_damaged_job_file_is_one_line_for_generate(pristine, tmp_path, capsys):
    """`_job.json` of an unfinished set (truncated, nested, a provenance field of a wrong
    type): the resuming generate refuses in one line, or resumes (exit 0)."""
    from transferset.commands.main import main

    lab = pristine.parent / "lab.parquet"
    text = (pristine / "_job.json").read_text()
    variants = [v for v in _variants(text, ([],)) if v[0].startswith(("truncated", "nested", "config_fingerprint"))
                or (v[0].startswith("provenance.") and v[0].count(".") == 1 and not v[0].endswith("removed"))]
    for name, damaged in variants:
        directory = tmp_path / "ts"
        shutil.rmtree(directory, ignore_errors=True)
        shutil.copytree(pristine, directory)
        (directory / "_manifest.json").unlink()
        (directory / "_shards" / "part-00002.json").unlink()
        (directory / "_job.json").write_text(damaged)
        code = main(["generate", "--teacher", "teacher_models:tiny_a", "--source", str(lab), *BASE, "--out", str(directory), "--quiet"])
        err = capsys.readouterr().err
        assert code in (0, 2) and "internal error" not in err and len(err.strip().splitlines()) <= 1, (name, err)
    assert len(variants) > 25
