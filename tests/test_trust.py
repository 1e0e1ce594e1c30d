"""Nothing is unpickled that the user did not vouch for (train side; generate's --weights is in test_generate_errors)."""

import torch

from conftest import run_cli
from test_train_cli import write_labelled_parquet

import teacher_models


def test_resume_from_a_pickled_checkpoint_needs_trust(tmp_path):
    data = write_labelled_parquet(tmp_path / "data.parquet", rows=64)
    args = ["train", "--data", data, "--input-column", "pixels", "--input-shape", "1,6,6", "--student-arg", "hidden=8",
            "--epochs", "1", "--batch-size", "16", "--quiet"]
    run_cli(*args, "--out", tmp_path / "run", check=True)
    checkpoint = sorted((tmp_path / "run" / "checkpoints").glob("*.pt"))[-1]
    state = torch.load(checkpoint, weights_only=True)
    state["note"] = teacher_models.PickledStateDict(a=1)  # a custom class: loading it runs pickle's code paths
    forged = tmp_path / "forged.pt"
    torch.save(state, forged)
    proc = run_cli(*args, "--out", tmp_path / "run2", "--resume", forged)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--trust-checkpoint" in proc.stderr and "running code" in proc.stderr
