"""Evaluation metrics against a NumPy reference, ECE by hand, class bias, the metrics log."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from train.metrics import EvalAccumulator, MetricsLog, evaluate, expected_calibration_error, parse_class_bias
from transferset.errors import UserError


def np_reference(logits: np.ndarray, labels: np.ndarray, targets: np.ndarray | None, bins: int = 15) -> dict:
    logits = logits.astype(np.float64)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_q = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    pred = logits.argmax(axis=1)
    keep = labels >= 0
    y = labels[keep]
    hit = pred[keep] == y
    conf = np.exp(log_q[keep].max(axis=1))
    # bins (lo, hi]: np.digitize(right=True) against the inner edges
    which = np.digitize(conf, np.linspace(0, 1, bins + 1)[1:-1], right=True)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.sum() / len(conf) * abs(hit[m].mean() - conf[m].mean())
    out = {
        "rows": len(labels),
        "labelled": int(keep.sum()),
        "accuracy": hit.mean(),
        "errors": int((~hit).sum()),
        "nll": float(-log_q[keep][np.arange(len(y)), y].mean()),
        "ece": ece,
        "per_class_errors": [int(((y == c) & ~hit).sum()) for c in range(logits.shape[1])],
        "per_class_rows": [int((y == c).sum()) for c in range(logits.shape[1])],
    }
    if targets is not None:
        out["agreement"] = float((pred == targets.argmax(axis=1)).mean())
    return out


def _check(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("C", [2, 10, 37])
def test_accumulator_matches_numpy_over_uneven_batches(C):
    rng = np.random.default_rng(C)
    n = 203
    logits = (rng.standard_normal((n, C)) * 2).astype(np.float32)
    labels = rng.integers(0, C, n)
    labels[::7] = -1
    targets = logits + rng.standard_normal((n, C)).astype(np.float32)
    acc = EvalAccumulator(C)
    for start, stop in [(0, 1), (1, 64), (64, 65), (65, 203)]:  # includes an all-unlabelled batch (row 0)
        acc.update(torch.from_numpy(logits[start:stop]), torch.from_numpy(labels[start:stop]),
                   torch.from_numpy(targets[start:stop]).argmax(dim=-1))  # the teachers' top class
    _check(acc.result(), np_reference(logits, labels, targets))


def test_ece_by_hand():
    # conf 0.95 (bin 14) right, conf 0.95 wrong, conf 0.55 (bin 8) right:
    # |1/2 - 0.95| * 2/3 + |1 - 0.55| * 1/3 = 0.3 + 0.15
    assert expected_calibration_error([0.95, 0.95, 0.55], [1, 0, 1]) == pytest.approx(0.45)
    assert expected_calibration_error([1.0, 0.5], [1, 0]) == pytest.approx(0.25)  # 1.0 in the last bin, 0.5 in (0.467, 0.5]
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 200_000)
    correct = rng.uniform(size=conf.size) < conf  # calibrated by construction
    assert expected_calibration_error(conf, correct) < 0.01


def test_no_labels_and_no_targets():
    acc = EvalAccumulator(3)
    acc.update(torch.randn(4, 3), torch.full((4,), -1))
    assert acc.result() == {"rows": 4, "labelled": 0}


def test_labels_beyond_num_classes_are_refused():
    acc = EvalAccumulator(3, where="test.parquet")
    with pytest.raises(UserError, match="test.parquet has label 5 but the student has 3 classes"):
        acc.update(torch.randn(2, 3), torch.tensor([0, 5]))


def test_parse_class_bias():
    bias = parse_class_bias(["3=3.5", "0=-1"], 5)
    assert bias.tolist() == [-1.0, 0.0, 0.0, 3.5, 0.0]
    assert parse_class_bias(None, 5) is None
    assert parse_class_bias(["three=2"], 4, ["zero", "one", "two", "three"]).tolist() == [0.0, 0.0, 0.0, 2.0]
    for bad in (["3"], ["x=1"], ["7=1"], ["-1=2"]):
        with pytest.raises(UserError, match="--class-bias"):
            parse_class_bias(bad, 5)


class _Fixed(torch.nn.Module):
    """A 'model' that returns the logits stored in its input."""

    def forward(self, x):
        return x


def test_evaluate_applies_class_bias_before_every_metric():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    labels = torch.tensor([1, 1, 2])
    batch = SimpleNamespace(inputs=logits, labels=labels, teacher_top1=None, to=lambda device, non_blocking=False: batch)
    plain = evaluate(_Fixed(), [batch], num_classes=3, device=torch.device("cpu"))
    assert plain["errors"] == 1 and plain["per_class_errors"] == [0, 1, 0]
    biased = evaluate(_Fixed(), [batch], num_classes=3, device=torch.device("cpu"), class_bias=parse_class_bias(["1=2.5"], 3))
    want = np_reference((logits + torch.tensor([0.0, 2.5, 0.0])).numpy(), labels.numpy(), None)
    _check(biased, want)
    assert biased["errors"] == 1 and biased["per_class_errors"] == [0, 0, 1]


def test_metrics_log_append_read_and_truncate(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (10, 20, 30):
        log.append({"step": step, "epoch": step // 10})
    assert [r["step"] for r in log.read()] == [10, 20, 30]
    log.keep_until(20)
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [10, 20]
