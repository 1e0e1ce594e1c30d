"""`transferset verify`: damaged shards are named; dropping them and rerunning generate repairs the set."""

import polars as pl

from conftest import run_cli

BASE = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "50", "--shard-rows", "128"]


def test_flipped_byte_and_truncation_are_named_then_repaired(tmp_path, sources):
    lab, unl = sources
    out = tmp_path / "ts"
    args = ["generate", "--teacher", "teacher_models:tiny_a", "--source", lab, "--source", unl, *BASE, "--out", out]
    run_cli(*args, check=True)
    original = pl.read_parquet(f"{out}/*.parquet").sort("id")
    ok = run_cli("verify", out)
    assert ok.returncode == 0 and "OK, 7 shards, 720 rows" in ok.stdout

    flipped = out / "part-00002.parquet"
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0xFF
    flipped.write_bytes(bytes(data))
    truncated = out / "part-00005.parquet"
    truncated.write_bytes(truncated.read_bytes()[:-100])

    bad = run_cli("verify", out)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "2 of 7 shards bad" in bad.stderr
    assert "part-00002.parquet: checksum mismatch" in bad.stderr
    assert "part-00005.parquet: truncated" in bad.stderr

    dropped = run_cli("verify", out, "--drop-bad")
    assert dropped.returncode == 2 and "rerun the same generate" in dropped.stderr
    assert not flipped.exists() and not (out / "_manifest.json").exists()
    resumed = run_cli(*args, check=True)
    assert "resuming: 5 of 7 shards" in resumed.stderr
    assert run_cli("verify", out).returncode == 0
    assert pl.read_parquet(f"{out}/*.parquet").sort("id").equals(original)


def test_verify_refuses_what_is_not_a_transfer_set(tmp_path):
    proc = run_cli("verify", tmp_path)
    assert proc.returncode == 2 and "is not a transfer set" in proc.stderr


def test_trainer_refuses_a_damaged_shard_by_name(tmp_path, sources):
    lab, unl = sources
    out = tmp_path / "ts"
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", lab, "--source", unl, *BASE, "--out", out, check=True)
    shard = out / "part-00003.parquet"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0x01
    shard.write_bytes(bytes(data))
    train = ["train", "--transfer", out, "--student-arg", "hidden=8", "--epochs", "1", "--quiet"]
    proc = run_cli(*train, "--out", tmp_path / "run")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "part-00003.parquet: checksum mismatch" in proc.stderr and "transferset verify" in proc.stderr


def test_a_manifest_cannot_point_verify_or_drop_bad_outside_the_set(tmp_path, sources):
    import json

    out = tmp_path / "ts"
    run_cli("generate", "--teacher", "teacher_models:tiny_a", "--source", sources[0], *BASE, "--out", out, check=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    manifest = json.loads((out / "_manifest.json").read_text())
    manifest["shards"][1]["path"] = "../victim.txt"
    (out / "_manifest.json").write_text(json.dumps(manifest))
    (out / "part-00000.parquet").unlink()  # a missing shard too: verify must still check every path
    proc = run_cli("verify", out, "--drop-bad")
    assert proc.returncode == 2 and "points outside the transfer set" in proc.stderr
    assert victim.read_text() == "not yours"
