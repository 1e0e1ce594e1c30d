"""Exact resume: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one.

The student uses dropout (torch's global RNG), --jitter (per-step generator) and
alpha < 1 (soft + hard terms), so a resume that forgot any RNG state, the
optimiser's momentum, the schedule's position or the batch position would
differ. 157 rows in batches of 8: 20 batches per epoch, the last one 5 rows.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import cli
from conftest import ROOT, TESTS
from test_train_cli import build_transfer_set
from train import checkpoint as ckpt

STEPS_PER_EPOCH = 20  # ceil(157 / 8)
EPOCHS = 3
TIMING = ("seconds", "rows_per_s")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    transfer = build_transfer_set(root / "ts", rows=157)
    args = [
        "train", "--transfer", str(transfer), "--student", "slow_students:student",
        "--student-arg", "hidden=24,16", "--student-arg", "dropout=0.3",
        "--jitter", "1", "--alpha", "0.7", "--lr", "0.2", "--warmup-steps", "5", "--grad-clip", "5",
        "--epochs", str(EPOCHS), "--batch-size", "8", "--seed", "11", "--checkpoint-every", "7", "--quiet",
    ]
    reference, full = root / "reference", root / "full"
    assert cli.main([*args, "--out", str(reference)]) == 0
    assert cli.main([*args, "--keep-checkpoints", "100", "--out", str(full)]) == 0  # every checkpoint kept
    yield {"root": root, "args": args, "reference": reference, "full": full}


def _state(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "student.pt", weights_only=True)


def _assert_same_run(run: Path, reference: Path) -> None:
    got, want = _state(run), _state(reference)
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), f"{name} differs after resume"
    strip = lambda records: [{k: v for k, v in r.items() if k not in TIMING} for r in records]  # noqa: E731
    got_log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    want_log = [json.loads(line) for line in (reference / "metrics.jsonl").read_text().splitlines()]
    assert strip(got_log) == strip(want_log)


def test_sigkill_mid_run_then_rerun_is_bit_identical(setup):
    out = setup["root"] / "killed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS)]), SLOW_STUDENT_DELAY="0.02")
    proc = subprocess.Popen([sys.executable, "-m", "cli", *setup["args"], "--keep-checkpoints", "100", "--out", str(out)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    target = out / "checkpoints" / "step-00000014.pt"  # mid epoch 1 (batch 14 of 20)
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert target.exists(), "the run never wrote its step-14 checkpoint"
    assert not (out / "student.pt").exists(), "the run finished before the kill"
    steps = [ckpt.load_checkpoint(p)["position"]["step"] for p in ckpt.list_checkpoints(out / "checkpoints")]
    assert 14 in steps and max(steps) < EPOCHS * STEPS_PER_EPOCH

    # Rerunning the same command resumes from the newest checkpoint.
    assert cli.main([*setup["args"], "--keep-checkpoints", "100", "--out", str(out)]) == 0
    _assert_same_run(out, setup["reference"])


@pytest.mark.parametrize("step", [7, 21, 40])  # mid epoch 1, right after epoch 1's end + 1, the end of epoch 2
def test_resume_from_any_checkpoint_is_bit_identical(setup, step):
    """--resume CHECKPOINT into a fresh run directory, from mid-epoch and epoch-end positions."""
    root = setup["root"]
    checkpoint = ckpt.checkpoint_path(setup["full"] / "checkpoints", step)
    position = ckpt.load_checkpoint(checkpoint)["position"]
    assert position["step"] == step
    assert position["batch_in_epoch"] == step - position["epoch"] * STEPS_PER_EPOCH
    out = root / f"resumed-{step}"
    assert cli.main([*setup["args"], "--resume", str(checkpoint), "--out", str(out)]) == 0
    got, want = _state(out), _state(setup["reference"])
    assert all(torch.equal(got[k], want[k]) for k in want)
    # the resumed directory logs only the epochs it finished, with the reference's numbers
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    reference = [json.loads(line) for line in (setup["reference"] / "metrics.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in r.items() if k not in TIMING} for r in records] == [
        {k: v for k, v in r.items() if k not in TIMING} for r in reference[position["epoch"]:]
    ]


def test_resume_with_another_config_is_refused(setup, capsys):
    source = setup["reference"] / "checkpoints"
    latest = ckpt.list_checkpoints(source)[-1]
    args = [a if a != "0.7" else "0.6" for a in setup["args"]]  # --alpha 0.6
    code = cli.main([*args, "--resume", str(latest), "--out", str(setup["root"] / "other")])
    err = capsys.readouterr().err
    assert code == 2 and "checkpoint was written by a different configuration" in err and err.count("\n") == 1


def test_checkpoint_contents_load_with_weights_only(setup):
    paths = ckpt.list_checkpoints(setup["reference"] / "checkpoints")
    assert [p.name for p in paths] == ["step-00000056.pt", "step-00000060.pt"]  # keep 2: the last mid-epoch one and the end
    state = torch.load(paths[-1], weights_only=True)
    assert state["position"] == {"epoch": EPOCHS, "batch_in_epoch": 0, "step": EPOCHS * STEPS_PER_EPOCH}
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "epoch_sums", "fingerprint"} <= state.keys()
    assert state["fingerprint"] == json.loads((setup["reference"] / "config.json").read_text())["fingerprint"]
    assert not [p for p in (setup["reference"] / "checkpoints").iterdir() if p.name.startswith(".")]


def test_rng_state_round_trip():
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = ckpt.rng_state()
    first = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    ckpt.set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), [random.random() for _ in range(3)])
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_save_checkpoint_is_atomic_and_prunes(tmp_path):
    for step in (3, 10, 7):
        ckpt.save_checkpoint(tmp_path, {"position": {"step": step}, "rng": ckpt.rng_state()}, keep=2)
    (tmp_path / ".step-00000011.pt.tmp-123").write_bytes(b"half a checkpoint")  # what a kill mid-write leaves
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-00000007.pt", "step-00000010.pt"]
    (tmp_path / "step-00000012.pt").write_bytes(b"not a checkpoint")
    from transferset.errors import UserError

    with pytest.raises(UserError, match="not a checkpoint torch can read|cannot be read"):
        ckpt.load_checkpoint(tmp_path / "step-00000012.pt")


def test_resume_with_dataloader_workers_is_bit_identical(setup):
    """--workers 2: the loader interleaves its workers' batches; resume skips by loader position."""
    root = setup["root"]
    args = [*setup["args"], "--workers", "2", "--epochs", "2", "--keep-checkpoints", "100"]
    assert cli.main([*args, "--out", str(root / "workers-full")]) == 0
    checkpoint = ckpt.checkpoint_path(root / "workers-full" / "checkpoints", 28)  # epoch 2, batch 8 of 20
    assert cli.main([*args, "--resume", str(checkpoint), "--out", str(root / "workers-resumed")]) == 0
    got, want = _state(root / "workers-resumed"), _state(root / "workers-full")
    assert all(torch.equal(got[k], want[k]) for k in want)
