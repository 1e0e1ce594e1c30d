"""torchrun students: DDP on the CPU (gloo), started by the tests themselves.

157 rows, global batch 8 (4 per rank on 2 ranks): 20 global batches, the last of 5
rows, split 3 + 2 (so the unequal-slice loss weighting is exercised). The student
has no random layers, so a 2-process run must equal a 1-process run to float
tolerance (gradients averaged by gloo instead of summed in one matmul), and a
mid-epoch checkpoint must resume on the other world size to the same weights.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import cli
from conftest import run_torchrun
from test_train_cli import build_transfer_set
from train import checkpoint as ckpt

ARGS = ["--student", "slow_students:student", "--student-arg", "hidden=24", "--alpha", "0.7", "--lr", "0.2",
        "--epochs", "2", "--batch-size", "8", "--seed", "5", "--checkpoint-every", "5", "--keep-checkpoints", "100",
        "--device", "cpu", "--quiet"]


def torchrun(*args, env_extra: dict | None = None, wait: bool = True):
    return run_torchrun(*args, env_extra=env_extra, wait=wait)


def weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "student.pt", weights_only=True)


def assert_close_runs(got: Path, want: Path) -> None:
    a, b = weights(got), weights(want)
    assert a.keys() == b.keys()
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")


def assert_same_metrics(got: Path, want: Path) -> None:
    records = lambda run: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    for g, w in zip(records(got), records(want), strict=True):
        assert g["train_labelled"] == w["train_labelled"]
        for key in ("train_loss", "train_soft", "train_hard", "train_baseline", "train_accuracy"):
            assert g[key] == pytest.approx(w[key], rel=1e-4), key


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The single-process reference run (in this process: cheap; each xdist worker
    that runs a test of this module builds its own)."""
    root = tmp_path_factory.mktemp("ddp")
    transfer = build_transfer_set(root / "ts", rows=157)
    single = root / "single"
    assert cli.main(["train", "--transfer", str(transfer), *ARGS, "--out", str(single)]) == 0
    return {"root": root, "transfer": transfer, "single": single}


def test_two_processes_train_the_single_process_student_and_resume_on_one(runs):
    double = runs["root"] / "double"
    proc = torchrun("train", "--transfer", runs["transfer"], *ARGS, "--out", double)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_runs(double, runs["single"])
    # Only rank 0 wrote: one metrics line per epoch, the same checkpoints as one process.
    lines = (double / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    steps = lambda run: [ckpt.load_checkpoint(p)["position"]["step"] for p in ckpt.list_checkpoints(run / "checkpoints")]  # noqa: E731
    assert steps(double) == steps(runs["single"])
    assert_same_metrics(double, runs["single"])  # the epoch's sums were summed over the ranks

    # Mid epoch 1 (global batch 5 of 20): one process continues the 2-process run.
    checkpoint = ckpt.checkpoint_path(double / "checkpoints", 25)
    out = runs["root"] / "two-to-one"
    assert cli.main(["train", "--transfer", str(runs["transfer"]), *ARGS, "--resume", str(checkpoint), "--out", str(out)]) == 0
    assert_close_runs(out, runs["single"])


def test_a_checkpoint_of_one_process_resumes_on_two(runs):
    checkpoint = ckpt.checkpoint_path(runs["single"] / "checkpoints", 15)  # mid epoch 0
    out = runs["root"] / "one-to-two"
    proc = torchrun("train", "--transfer", runs["transfer"], *ARGS, "--resume", checkpoint, "--out", out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_close_runs(out, runs["single"])
    assert_same_metrics(out, runs["single"])  # the checkpoint's epoch sums counted once, not once per rank


@pytest.mark.slow  # two more torchrun launches (~20 s): `pytest -m slow`
def test_a_rank_that_dies_stops_the_job_naming_it_and_the_rerun_resumes(runs):
    """SIGKILL rank 1 once the step-5 checkpoint exists: torchrun stops rank 0 and
    names rank 1; the same command again resumes and ends with the reference weights."""
    out = runs["root"] / "killed"
    command = ["train", "--transfer", runs["transfer"], *ARGS, "--out", out]
    proc = torchrun(*command, env_extra={"SLOW_STUDENT_DELAY": "0.05"}, wait=False)
    target = out / "checkpoints" / "step-00000005.pt"
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    victim = _rank_pid(proc.pid, rank=1)
    assert victim is not None, "rank 1 not found"
    os.kill(victim, signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "rank: 1" in stderr or "rank 1" in stderr, stderr[-2000:]
    assert not (out / "student.pt").exists()
    rerun = torchrun(*command)
    assert rerun.returncode == 0, rerun.stderr[:6000]
    assert_close_runs(out, runs["single"])
    assert_same_metrics(out, runs["single"])


def _rank_pid(parent: int, rank: int) -> int | None:
    """The pid of the worker torchrun started with RANK=`rank` (from /proc)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_resuming_with_another_global_batch_is_refused(runs, capsys):
    """The position in the global order means nothing under another global batch: the
    checkpoint's configuration differs, and the refusal names batch_size."""
    checkpoint = ckpt.checkpoint_path(runs["single"] / "checkpoints", 15)
    args = [a if a != "8" else "16" for a in ARGS]  # --batch-size 16
    out = runs["root"] / "other-batch"
    assert cli.main(["train", "--transfer", str(runs["transfer"]), *args, "--resume", str(checkpoint), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "(changed: --batch-size)" in error[0] and "different configuration" in error[0], error
    assert not (out / "student.pt").exists()


@pytest.mark.parametrize("world_size", ["1", "2"])
def test_a_torchrun_worker_exits_with_its_code_and_all_its_output(runs, world_size):
    """cli.entry: a worker (WORLD_SIZE > 1) skips the interpreter's teardown (os._exit),
    after flushing: stdout piped to a file is whole, and the exit code is the command's."""
    import subprocess
    import sys

    env = dict(os.environ, WORLD_SIZE=world_size, PYTHONPATH=str(Path(cli.__file__).parent))
    ok = subprocess.run([sys.executable, "-m", "cli", "inspect", str(runs["transfer"]), "--json"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["rows"] == 157
    bad = subprocess.run([sys.executable, "-m", "cli", "inspect", str(runs["root"] / "nothing-here")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.startswith("transferset inspect: error:") and not bad.stdout
