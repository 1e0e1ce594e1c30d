"""benchmarks/bench_lm_distill.py: issue 9's per-token distillation study on SST-2.

The end-to-end test runs `--smoke` (200 real SST-2 train sentences, 100 dev sentences,
tiny models, one epoch) and checks results.json and the printed table; the unit tests
check the script's own teacher NLL (next token at target positions, arithmetic
ensemble) against NumPy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_dataset

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "datasets" / "sst2"
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_lm_distill as study  # noqa: E402


@pytest.mark.slow  # a benchmark's smoke run (~40 s): `pytest -m slow`
def test_smoke_study_runs_end_to_end_and_reports_every_student(tmp_path):
    shared_dataset(SST2 / "train.tsv")
    work = tmp_path / "lm"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_lm_distill.py"), "--smoke", "--work", str(work)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    results = json.loads((work / "results.json").read_text())
    assert results["smoke"] and results["plan"]["train_sentences"] == 200
    assert set(results["students"]) == {"topk:4", "sampled:4", "hard labels"}
    assert results["hard_baseline_set"] == "topk:4"
    dev_positions = results["dev"]["target_positions"]
    assert dev_positions > 0
    for name, row in results["students"].items():
        # every student is scored on the same dev positions as the script scores the teachers
        assert row["positions"] == dev_positions, name
        assert set(row["seeds"]) == {"0"} and row["nll_sd"] == 0.0  # the smoke plan trains one seed
        assert 0 < row["nll"] < math.log(results["plan"]["vocab"] + 10), name
        assert row["perplexity"] == pytest.approx(math.exp(row["nll"]))
        assert 0 <= row["agreement"] <= 1 and 0 <= row["token_accuracy"] <= 1
    for teacher in results["teachers"] + [results["ensemble"]]:
        assert teacher["positions"] == dev_positions
        assert teacher["perplexity"] == pytest.approx(math.exp(teacher["nll"]))
    for kind, inspected in results["sets"].items():
        assert inspected["target_positions"] == results["train"]["target_positions"], kind
        assert inspected["bytes_per_token"] > 0
    assert (work / "teacher-0" / "config.json").is_file()  # the teacher is an hf: directory
    table_lines = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table_lines) == 1 + 2 + 3  # header, teacher + ensemble, three students


def test_next_token_nll_matches_numpy_at_target_positions_only():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 7)).astype(np.float32) * 3
    ids = rng.integers(0, 7, size=(2, 5))
    targets = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]])  # the last position never counts
    got = study.next_token_nll(torch.from_numpy(logits), torch.from_numpy(ids), torch.from_numpy(targets)).numpy()
    want = []
    for b in range(2):
        for t in range(4):
            if targets[b, t]:
                z = logits[b, t].astype(np.float64)
                want.append(np.log(np.exp(z - z.max()).sum()) + z.max() - z[ids[b, t + 1]])
    np.testing.assert_allclose(got, want, rtol=1e-5)


class _FixedLM(torch.nn.Module):
    def __init__(self, logits: np.ndarray) -> None:
        super().__init__()
        self.table = torch.from_numpy(logits)

    def forward(self, input_ids, attention_mask):
        return type("Out", (), {"logits": self.table[: len(input_ids)]})()


def test_dev_nll_of_an_ensemble_is_the_nll_of_the_mean_probability(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    a, b = (rng.normal(size=(3, 4, 6)).astype(np.float32) * 2 for _ in range(2))
    ids = rng.integers(0, 6, size=(3, 4))
    targets = np.array([[1, 1, 1, 0], [1, 0, 1, 0], [0, 1, 1, 0]])
    monkeypatch.setattr(study, "token_rows", lambda path: (torch.from_numpy(ids), torch.ones(3, 4, dtype=torch.int64),
                                                           torch.from_numpy(targets)))
    got = study.dev_nll([_FixedLM(a), _FixedLM(b)], tmp_path / "unused").numpy()

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    mean = (softmax(a.astype(np.float64)) + softmax(b.astype(np.float64))) / 2
    want = [-np.log(mean[r, t, ids[r, t + 1]]) for r in range(3) for t in range(3) if targets[r, t]]
    np.testing.assert_allclose(got, want, rtol=1e-5)
