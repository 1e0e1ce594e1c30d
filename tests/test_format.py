"""The format layer: typed provenance, the fingerprint's field list, the codec
registry, and sets written by an earlier transferset (tests/fixtures/v1-dense-set,
made by the version before the format layer, two teachers, --keep-teacher-logits)."""

import dataclasses
import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from transferset.errors import UserError
from transferset.format import codecs
from transferset.format.manifest import read_manifest
from transferset.format.provenance import FINGERPRINTED, Provenance, fingerprint
from transferset.format.shards import check_shards_match
from transferset.format.verify import verify

V1 = __import__("pathlib").Path(__file__).parent / "fixtures" / "v1-dense-set"


def test_every_fingerprinted_setting_is_recorded():
    fields = {f.name for f in dataclasses.fields(Provenance)}
    assert set(FINGERPRINTED) <= fields
    for setting in ("batch_size", "row_group_rows", "shard_rows", "precision", "teachers", "sources"):
        assert setting in FINGERPRINTED
    with pytest.raises(ValueError):
        fingerprint({"temperature": 1.0})  # nothing can be hashed outside the list


def test_provenance_round_trips_and_validates():
    prov = Provenance(target_kind="dense", num_classes=3, temperature=2.0, combine="geometric", storage_dtype="float16",
                      teachers=[{"name": "t"}], sources=[{"path": "s"}], input={"columns": ["x"], "shape": [2]}, batch_size=7)
    assert Provenance.decode_bytes(prov.encode_bytes(), "here") == prov
    for key, bad in (("num_classes", 1), ("combine", "median"), ("teachers", []), ("target_options", [1])):
        with pytest.raises(UserError, match=key):
            Provenance.decode({**prov.encode(), key: bad}, "here")
    with pytest.raises(UserError, match="target kind 'sequence' is reserved for a newer transferset; this version reads dense, topk, sampled, views"):
        Provenance.decode({**prov.encode(), "target_kind": "sequence"}, "here")
    with pytest.raises(UserError, match="not valid JSON"):
        Provenance.decode_bytes(b"[" * 100000, "here")  # deep nesting is one line, not a RecursionError


def test_a_set_written_before_the_format_layer_still_reads(tmp_path):
    manifest = read_manifest(V1)
    assert manifest.rows == 61 and manifest.provenance.row_group_rows is None  # not recorded back then
    assert manifest.provenance.combine == "arithmetic" and manifest.provenance.teacher_logits_kept
    check_shards_match(manifest)
    assert verify(V1)[1] == []
    codec = codecs.get_codec(manifest.provenance.target_kind)
    assert codec.bytes_per_row(manifest.provenance) == 2 * 10 * 3  # float16, 10 classes, target + 2 members


def test_a_set_written_before_the_format_layer_still_trains(tmp_path):
    data = tmp_path / "v1"
    shutil.copytree(V1, data)
    inspected = run_cli("inspect", data, "--json", check=True)
    summary = json.loads(inspected.stdout)
    assert summary["rows"] == 61 and summary["teacher_logits_kept"]
    run_cli("train", "--transfer", data, "--student-arg", "hidden=8", "--epochs", "2", "--batch-size", "16",
            "--quiet", "--out", tmp_path / "run", check=True)
    assert (tmp_path / "run" / "student.pt2").is_file()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 2 and np.isfinite(metrics[-1]["train_loss"])
