"""One command per output: locks (transferset/ownership.py), raced with real processes.

tests/race.py forks the commands of a round from one interpreter that imported the
CLI already, so both start within a millisecond; each round uses a fresh --out.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import cli
from conftest import ROOT, TESTS, run_cli
from transferset import ownership, replace
from transferset.errors import UserError
from transferset.format.manifest import JOB, read_manifest

TEACHER = ["--teacher", "teacher_models:tiny_a"]
PIXELS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16"]
ROUNDS = 10
LOCKED = "is in use by pid"


def generate_argv(source, out, *extra) -> list[str]:
    return ["generate", *TEACHER, "--source", str(source), *PIXELS, "--shard-rows", "100", "--quiet", "--out", str(out), *extra]


def train_argv(transfer, out, *extra) -> list[str]:
    return ["train", "--transfer", str(transfer), "--student-arg", "hidden=8", "--epochs", "1", "--batch-size", "64",
            "--quiet", "--out", str(out), *extra]


def race(tmp_path: Path, rounds: list[list[list[str]]]) -> list[list[tuple[int, str]]]:
    plan = tmp_path / "rounds.json"
    plan.write_text(json.dumps(rounds))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(TESTS / "race.py"), str(plan)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return [[(code, err) for code, err in results] for results in json.loads(proc.stdout)]


def verifies(directory: Path) -> bool:
    return cli.main(["verify", str(directory)]) == 0


def one_provenance(out: Path) -> float:
    """The set's temperature, after checking that the manifest and _job.json name one configuration."""
    job = json.loads((out / JOB).read_text())
    manifest = read_manifest(out)
    assert manifest.provenance.config_fingerprint == job["config_fingerprint"]
    return manifest.provenance.temperature


# -- races -----------------------------------------------------------------------------------------


def test_two_generates_with_different_configurations_one_wins(tmp_path, sources):
    lab, _ = sources
    outs = [tmp_path / f"set-{i}" for i in range(ROUNDS)]
    results = race(tmp_path, [[generate_argv(lab, out, "-T", "2"), generate_argv(lab, out, "-T", "5")] for out in outs])
    for out, round_ in zip(outs, results):
        codes = sorted(code for code, _ in round_)
        assert codes == [0, 2], round_
        winner = [i for i, (code, _) in enumerate(round_) if code == 0][0]
        loser_err = round_[1 - winner][1]
        assert LOCKED in loser_err or "different configuration" in loser_err, loser_err
        assert len(loser_err.strip().splitlines()) == 1 and "Traceback" not in loser_err
        assert verifies(out)
        assert one_provenance(out) == (2.0, 5.0)[winner]


def test_two_identical_generates_never_crash(tmp_path, sources):
    lab, _ = sources
    outs = [tmp_path / f"set-{i}" for i in range(ROUNDS)]
    results = race(tmp_path, [[generate_argv(lab, out), generate_argv(lab, out)] for out in outs])
    refused = 0
    for out, round_ in zip(outs, results):
        assert 0 in [code for code, _ in round_], round_
        for code, err in round_:
            assert code == 0 or (code == 2 and LOCKED in err), round_  # never "internal error: FileNotFoundError"
            refused += code == 2
        assert verifies(out)
    assert refused, "no round raced: every second command started after the first had finished"


def test_two_trains_into_one_out(tmp_path, sources):
    lab, _ = sources
    transfer = tmp_path / "set"
    assert cli.main(generate_argv(lab, transfer)) == 0
    outs = [tmp_path / f"run-{i}" for i in range(3)]
    results = race(tmp_path, [[train_argv(transfer, out), train_argv(transfer, out, "--lr", "0.01")] for out in outs])
    for out, round_ in zip(outs, results):
        codes = sorted(code for code, _ in round_)
        assert codes == [0, 2], round_
        loser_err = [err for code, err in round_ if code == 2][0]
        assert LOCKED in loser_err or "different configuration" in loser_err, loser_err
        config = json.loads((out / "config.json").read_text())
        winner = [i for i, (code, _) in enumerate(round_) if code == 0][0]
        assert config["finished"] and len((out / "metrics.jsonl").read_text().splitlines()) == 1
        assert (config["config"].get("lr") == 0.01) == (winner == 1), config["config"]  # config.json is the winner's


def test_cooperative_writers_share_a_set_but_not_a_writer_index(tmp_path, sources):
    lab, _ = sources
    writers = lambda out, *extra: [generate_argv(lab, out, "--num-writers", "2", "--writer-index", str(i), *extra) for i in (0, 1)]  # noqa: E731
    shared, twice, foreign = tmp_path / "shared", tmp_path / "twice", tmp_path / "foreign"
    together, same_index, other_config = race(tmp_path, [
        writers(shared),
        [writers(twice)[0], writers(twice)[0]],
        [writers(foreign)[0], writers(foreign, "-T", "5")[1]],
    ])
    assert [code for code, _ in together] == [0, 0], together  # cooperative: both run
    if not (shared / "_manifest.json").exists():  # both finished at once, each saw the other's shard missing
        assert cli.main(writers(shared)[0]) == 0
    assert verifies(shared)

    for code, err in same_index:
        assert code == 0 or (code == 2 and "writer 0 of 2 is already running" in err), same_index

    codes = sorted(code for code, _ in other_config)
    assert codes == [0, 2], other_config  # the second writer compares configurations, never adopts the other's job
    assert "different configuration" in [err for code, err in other_config if code == 2][0]


# -- a held lock, deterministically ----------------------------------------------------------------


def test_a_held_lock_names_its_holder_and_a_dead_ones_is_taken_over(tmp_path, sources):
    lab, _ = sources
    out = tmp_path / "set"
    with ownership.scope():
        ownership.claim(out)
        refused = run_cli(*generate_argv(lab, out))
        assert refused.returncode == 2, refused.stderr
        assert f"is in use by pid {os.getpid()} on host " in refused.stderr and len(refused.stderr.splitlines()) == 1
    # What a SIGKILLed holder leaves: the lock file with its pid, and no flock (the kernel dropped it).
    (out / ownership.SET_LOCK).write_text("pid 999999 on host elsewhere (transferset generate ...)\n")
    assert run_cli(*generate_argv(lab, out)).returncode == 0
    assert verifies(out) and not (out / ownership.SET_LOCK).exists()

    run = tmp_path / "run"
    with ownership.scope():
        ownership.claim(run)
        refused = run_cli(*train_argv(out, run))
        assert refused.returncode == 2 and LOCKED in refused.stderr, refused.stderr
    assert list(run.iterdir()) == []  # the refused train wrote nothing (and our lock file went with our claim)

    shard = sorted(out.glob("part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    with ownership.scope():
        ownership.claim(out)
        refused = run_cli("verify", out, "--drop-bad")
        assert refused.returncode == 2 and LOCKED in refused.stderr and shard.exists(), refused.stderr
    assert run_cli("verify", out, "--drop-bad").returncode == 2 and not shard.exists()


# -- a failed command leaves nothing that blocks its correction (item 12) ---------------------------


def test_a_bad_student_arg_leaves_nothing_and_the_correction_runs(tmp_path, sources):
    lab, _ = sources
    transfer = tmp_path / "set"
    assert cli.main(generate_argv(lab, transfer)) == 0
    run = tmp_path / "runs" / "x"
    bad = run_cli(*train_argv(transfer, run)[:-2], "--student-arg", "depth=3", "--out", run)
    assert bad.returncode == 2 and "--student-arg" in bad.stderr, bad.stderr
    assert not (run / "config.json").exists() and not run.exists() and not run.parent.exists()
    good = run_cli(*train_argv(transfer, run))
    assert good.returncode == 0, good.stderr


def test_a_run_that_stopped_before_its_first_checkpoint_does_not_block_a_changed_command(tmp_path, sources):
    lab, _ = sources
    transfer = tmp_path / "set"
    assert cli.main(generate_argv(lab, transfer)) == 0
    run = tmp_path / "run"
    assert cli.main(train_argv(transfer, run)) == 0
    (run / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()), "finished": False}))
    for leftover in [run / "student.pt", run / "student.pt2", *(run / "checkpoints").glob("*")]:
        leftover.unlink()
    assert cli.main(train_argv(transfer, run, "--lr", "0.01")) == 0
    assert json.loads((run / "config.json").read_text())["finished"]


def test_a_failed_generate_removes_the_out_it_created(tmp_path, sources):
    lab, _ = sources
    out = tmp_path / "new" / "set"
    failed = run_cli("generate", "--teacher", "teacher_models:seven_classes", "--source", lab, *PIXELS,
                     "--class-names", "a,b", "--out", out)
    assert failed.returncode == 2, failed.stderr
    assert not out.exists() and not out.parent.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    assert run_cli("generate", "--teacher", "teacher_models:seven_classes", "--source", lab, *PIXELS,
                   "--class-names", "a,b", "--out", kept).returncode == 2
    assert kept.is_dir() and not any(kept.iterdir())  # it existed before: left as it was


# -- --overwrite recovers from a kill at any point (item 4; the kill campaign kills for real) --------


@pytest.mark.parametrize("moved", [0, 1, 3, "all"])
def test_generate_overwrite_interrupted_after_moving_some_files_recovers(tmp_path, sources, moved):
    lab, _ = sources
    out = tmp_path / "set"
    assert cli.main(generate_argv(lab, out, "-T", "2")) == 0
    old = sorted(ownership.entries(out))
    trash = out / ownership.DISCARD
    trash.mkdir()
    (trash / "owner").write_text("generate")  # written before anything moves
    for entry in old if moved == "all" else old[:moved]:  # where a SIGKILL inside replace.discard leaves it
        entry.rename(trash / entry.name)
    assert cli.main(generate_argv(lab, out, "-T", "5", "--overwrite")) == 0
    assert verifies(out) and one_provenance(out) == 5.0 and not trash.exists()


def test_train_overwrite_interrupted_recovers(tmp_path, sources):
    lab, _ = sources
    transfer = tmp_path / "set"
    assert cli.main(generate_argv(lab, transfer)) == 0
    run = tmp_path / "run"
    assert cli.main(train_argv(transfer, run)) == 0
    trash = run / ownership.DISCARD
    trash.mkdir()
    (trash / "owner").write_text("train")
    (run / "config.json").rename(trash / "config.json")  # the old code deleted config.json first: refused forever
    (run / "notes.txt").write_text("the user's own file: a train --overwrite keeps it")
    with pytest.raises(UserError, match="interrupted `transferset train --overwrite`; rerun that command"):
        replace.finish_discard(run, owner="generate")  # another command's selection would delete notes.txt
    assert (run / "notes.txt").exists() and (trash / "config.json").exists()
    (run / "notes.txt").unlink()
    assert cli.main(train_argv(transfer, run, "--lr", "0.01", "--overwrite")) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["finished"] and not trash.exists()
