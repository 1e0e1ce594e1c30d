"""What `train` prints, and where: results on stdout, progress and logs on stderr; every
--eval set named in the epoch lines; counts with thousands separators and singular
nouns; defaults in --help."""

import argparse
import io
import json

import pytest

from conftest import run_cli
from test_train_cli import SIDE, write_labelled_parquet

INPUT = ["--input-column", "pixels", "--input-shape", f"1,{SIDE},{SIDE}", "--input-scale", "1/16"]
TINY = ["--student-arg", "hidden=16", "--batch-size", "64", "--lr", "0.2"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("out")
    return {
        "train": write_labelled_parquet(root / "train.parquet", rows=1200, seed=3),
        "test": write_labelled_parquet(root / "test.parquet", rows=101, seed=4),
        "other": write_labelled_parquet(root / "other.parquet", rows=57, seed=5),
        "root": root,
    }


def test_results_on_stdout_progress_on_stderr_each_eval_named(files, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", "--data", files["train"], *INPUT, *TINY, "--epochs", "1",
                   "--eval", files["test"], "--eval", files["other"], "--out", out, timeout=60)
    assert proc.returncode == 0, proc.stderr
    # stdout: the result, one line per eval set, named
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"trained {out}: 1 epoch, 19 steps, final train loss")
    assert lines[1].startswith("  test: 101 rows, accuracy ") and lines[2].startswith("  other: 57 rows, accuracy ")
    assert lines[-1] == f"  student: {out / 'student.pt2'}"
    # stderr: progress with separators, and the epoch line naming each eval set
    assert "epoch 1/1: 1,200/1,200 rows" in proc.stderr
    epoch_line = next(line for line in proc.stderr.splitlines() if line.startswith("epoch=1"))
    assert " test: acc=" in epoch_line and " other: acc=" in epoch_line
    assert "trained" not in proc.stderr and "accuracy 0." not in proc.stderr

    # --json: only the JSON object on stdout; --quiet: nothing on either
    again = run_cli("train", "--data", files["train"], *INPUT, *TINY, "--epochs", "1",
                    "--eval", files["test"], "--eval", files["other"], "--out", out, "--json", timeout=60)
    assert again.returncode == 0 and set(json.loads(again.stdout)["eval"]) == {str(files["test"]), str(files["other"])}
    assert "already trained (1 epoch)" in again.stderr  # not "1 epochs"
    quiet = run_cli("train", "--data", files["train"], *INPUT, *TINY, "--epochs", "1",
                    "--eval", files["test"], "--eval", files["other"], "--out", out, "--quiet", timeout=60)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_short_names_stay_unique():
    from train.metrics import short_names

    assert short_names(["/a/test.parquet", "/b/ts/"]) == {"/a/test.parquet": "test", "/b/ts/": "ts"}
    assert short_names(["/a/test.parquet", "/b/test.parquet"]) == {"/a/test.parquet": "/a/test.parquet", "/b/test.parquet": "/b/test.parquet"}


def test_counts_have_separators_and_singulars():
    from transferset.progress import counted, progress

    assert counted(1, "shard") == "1 shard" and counted(2, "shard") == "2 shards" and counted(60000, "row") == "60,000 rows"

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    for stream in (io.StringIO(), Terminal()):  # plain lines, and the rich bar
        with progress("epoch 1/1", 60000, stream=stream) as bar:
            bar.advance(60000)
        assert "60,000/60,000" in stream.getvalue()


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_shows_every_default(command):
    """Every flag with a value by default says it in --help (flags without one, or
    switches that are off, have nothing to show)."""
    from train.commands import eval as eval_command, train as train_command

    parser = argparse.ArgumentParser()
    {"train": train_command, "eval": eval_command}[command].add_arguments(parser)
    missing = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.default not in (None, False, True, argparse.SUPPRESS) and "default" not in (a.help or "")]
    assert missing == []
    text = run_cli(command, "--help", timeout=60).stdout
    assert ("(default: 5.0)" in text and "(default: 0.05)" in text) if command == "train" else "(default: 1024)" in text
