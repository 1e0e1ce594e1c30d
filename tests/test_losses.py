"""Student losses against an independent NumPy reference (float64), and their gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from train.losses import distillation_loss, hard_ce_loss, logit_mse_loss, soft_kl_loss

# -- the NumPy reference: written from the formulas, no torch ------------------


def np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    finite_max = np.max(x, axis=-1, keepdims=True)
    shifted = x - finite_max
    with np.errstate(divide="ignore"):
        return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))


def np_soft_kl(s: np.ndarray, t: np.ndarray, T: float) -> float:
    log_q = np_log_softmax(s / T)
    log_p = np_log_softmax(t / T)
    p = np.exp(log_p)
    terms = np.zeros_like(p)
    nz = p > 0
    terms[nz] = p[nz] * (log_p[nz] - log_q[nz])
    return T * T * terms.sum(axis=1).mean()


def np_hard_ce(s: np.ndarray, y: np.ndarray) -> float:
    keep = y >= 0
    if not keep.any():
        return 0.0
    log_q = np_log_softmax(s[keep])
    return float(-log_q[np.arange(keep.sum()), y[keep]].mean())


def np_mse(s: np.ndarray, t: np.ndarray) -> float:
    s = s.astype(np.float64) - s.mean(axis=1, keepdims=True)
    t = t.astype(np.float64) - t.mean(axis=1, keepdims=True)
    return float(((s - t) ** 2).mean())


def np_softmax(x: np.ndarray) -> np.ndarray:
    return np.exp(np_log_softmax(x))


def _logits(rng, b, c, scale=3.0):
    return (rng.standard_normal((b, c)) * scale).astype(np.float32)


# -- values ----------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.5, 4.0, 20.0])
@pytest.mark.parametrize("C", [2, 10, 101])
def test_soft_kl_matches_numpy(T, C):
    rng = np.random.default_rng(C * 100 + int(T * 10))
    s, t = _logits(rng, 13, C), _logits(rng, 13, C, scale=5.0)
    got = soft_kl_loss(torch.from_numpy(s), torch.from_numpy(t), T).item()
    want = np_soft_kl(s, t, T)
    assert got == pytest.approx(want, rel=2e-5, abs=1e-6)


def test_soft_kl_is_zero_when_student_matches_target_up_to_a_row_shift():
    rng = np.random.default_rng(1)
    t = _logits(rng, 9, 7)
    s = t + rng.standard_normal((9, 1)).astype(np.float32) * 10  # softmax ignores a per-row shift
    assert soft_kl_loss(torch.from_numpy(s), torch.from_numpy(t), 3.0).item() == pytest.approx(0.0, abs=1e-5)


def test_soft_kl_extreme_logits_stay_finite_and_match():
    rng = np.random.default_rng(2)
    s = _logits(rng, 11, 10)
    s[0] = 0.0
    s[0, 3] = 1e4  # a saturated student row
    s[1] = -1e4
    s[1, 0] = 1e4
    t = _logits(rng, 11, 10, scale=50.0)
    t[2] = -np.inf  # float16 storage underflow of an arithmetic mean: p = 0 exactly
    t[2, 5] = 0.0
    t[3, :4] = -np.inf
    for T in (1.0, 4.0):
        got = soft_kl_loss(torch.from_numpy(s), torch.from_numpy(t), T)
        assert torch.isfinite(got)
        assert got.item() == pytest.approx(np_soft_kl(s, t, T), rel=1e-4)


def test_soft_kl_zero_probability_targets_give_finite_gradients():
    s = torch.zeros(2, 4, requires_grad=True)
    t = torch.tensor([[0.0, -float("inf"), -float("inf"), -float("inf")], [0.0, 0.0, -float("inf"), -1.0]])
    soft_kl_loss(s, t, 2.0).backward()
    assert torch.isfinite(s.grad).all()
    # grad = T (q - p) / B: row 0 has p = one-hot(0), q uniform
    assert s.grad[0].tolist() == pytest.approx([2.0 * (0.25 - 1.0) / 2, 0.25, 0.25, 0.25], abs=1e-6)


def test_soft_kl_accepts_half_precision_student_logits():
    rng = np.random.default_rng(3)
    s, t = _logits(rng, 5, 6), _logits(rng, 5, 6)
    got = soft_kl_loss(torch.from_numpy(s).to(torch.bfloat16), torch.from_numpy(t).half(), 2.0)
    assert got.dtype == torch.float32
    s_bf = torch.from_numpy(s).to(torch.bfloat16).float().numpy()
    t_h = torch.from_numpy(t).half().float().numpy()
    assert got.item() == pytest.approx(np_soft_kl(s_bf, t_h, 2.0), rel=1e-5)


@pytest.mark.parametrize("C", [2, 10, 57])
def test_hard_ce_matches_numpy_on_labelled_rows_only(C):
    rng = np.random.default_rng(C)
    s = _logits(rng, 15, C)
    y = rng.integers(0, C, 15)
    y[::3] = -1
    got = hard_ce_loss(torch.from_numpy(s), torch.from_numpy(y)).item()
    assert got == pytest.approx(np_hard_ce(s, y), rel=1e-5)


def test_hard_ce_without_labels_is_an_exact_zero_with_zero_gradient():
    s = torch.randn(4, 3, requires_grad=True)
    loss = hard_ce_loss(s, torch.full((4,), -1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(s.grad, torch.zeros(4, 3))


def test_mse_matches_numpy_and_ignores_row_shifts():
    rng = np.random.default_rng(4)
    s, t = _logits(rng, 9, 10), _logits(rng, 9, 10)
    got = logit_mse_loss(torch.from_numpy(s), torch.from_numpy(t)).item()
    assert got == pytest.approx(np_mse(s, t), rel=1e-5)
    t_shifted = t - t.max(axis=1, keepdims=True)  # what a transfer set stores
    assert logit_mse_loss(torch.from_numpy(s), torch.from_numpy(t_shifted)).item() == pytest.approx(got, rel=1e-5)


# -- the mix of soft and hard ------------------------------------------------------


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.9, 1.0])
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_distillation_loss_is_alpha_weighted_mix(alpha, T):
    rng = np.random.default_rng(int(alpha * 10) + int(T))
    s, t = _logits(rng, 17, 10), _logits(rng, 17, 10)
    y = rng.integers(0, 10, 17)
    y[1::2] = -1  # unlabelled rows: soft term only
    loss, parts = distillation_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), alpha=alpha, temperature=T)
    want = alpha * np_soft_kl(s, t, T) + (1 - alpha) * np_hard_ce(s, y)
    assert loss.item() == pytest.approx(want, rel=2e-5)
    if 0 < alpha < 1:
        assert parts["soft"].item() == pytest.approx(np_soft_kl(s, t, T), rel=2e-5)
        assert parts["hard"].item() == pytest.approx(np_hard_ce(s, y), rel=2e-5)


def test_scale_does_not_depend_on_the_labelled_fraction():
    """Appending unlabelled copies of rows changes neither term's scale."""
    rng = np.random.default_rng(5)
    s, t = _logits(rng, 8, 5), _logits(rng, 8, 5)
    y = rng.integers(0, 5, 8)
    base, base_parts = distillation_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), alpha=0.5, temperature=2.0)
    s2, t2 = np.concatenate([s, s, s]), np.concatenate([t, t, t])
    y2 = np.concatenate([y, -np.ones(16, dtype=y.dtype)])  # now 1/3 labelled
    mixed, parts = distillation_loss(torch.from_numpy(s2), torch.from_numpy(t2), torch.from_numpy(y2), alpha=0.5, temperature=2.0)
    assert parts["hard"].item() == pytest.approx(base_parts["hard"].item(), rel=1e-6)
    assert parts["soft"].item() == pytest.approx(base_parts["soft"].item(), rel=1e-6)
    assert mixed.item() == pytest.approx(base.item(), rel=1e-6)


def test_mse_kind_and_no_target_case():
    rng = np.random.default_rng(6)
    s, t = _logits(rng, 7, 4), _logits(rng, 7, 4)
    y = np.array([0, 1, -1, 3, 2, -1, 0])
    loss, _ = distillation_loss(torch.from_numpy(s), torch.from_numpy(t), torch.from_numpy(y), alpha=0.7, temperature=3.0, kind="mse")
    assert loss.item() == pytest.approx(0.7 * np_mse(s, t) + 0.3 * np_hard_ce(s, y), rel=1e-5)
    plain, parts = distillation_loss(torch.from_numpy(s), None, torch.from_numpy(y), alpha=0.7, temperature=3.0)
    assert plain.item() == pytest.approx(np_hard_ce(s, y), rel=1e-5)
    assert parts["soft"].item() == 0.0


# -- gradients ---------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 3.0, 10.0])
def test_soft_gradient_is_T_times_q_minus_p_over_B(T):
    rng = np.random.default_rng(int(T))
    s, t = _logits(rng, 6, 8).astype(np.float64), _logits(rng, 6, 8).astype(np.float64)
    s_t = torch.tensor(s, dtype=torch.float64, requires_grad=True)
    soft_kl_loss(s_t, torch.tensor(t, dtype=torch.float64), T).backward()
    want = T * (np_softmax(s / T) - np_softmax(t / T)) / s.shape[0]
    np.testing.assert_allclose(s_t.grad.numpy(), want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_gradients_match_finite_differences(T):
    torch.manual_seed(0)
    s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 6, dtype=torch.float64) * 3
    y = torch.tensor([2, -1, 0, 5, -1])
    assert torch.autograd.gradcheck(lambda x: soft_kl_loss(x, t, T), (s,))
    assert torch.autograd.gradcheck(lambda x: hard_ce_loss(x, y), (s,))
    assert torch.autograd.gradcheck(lambda x: distillation_loss(x, t, y, alpha=0.6, temperature=T)[0], (s,))
    assert torch.autograd.gradcheck(lambda x: logit_mse_loss(x, t), (s,))


def test_soft_gradient_magnitude_stays_about_constant_across_T():
    """The T^2 factor: without it the gradient would shrink ~1/T^2 for large T."""
    rng = np.random.default_rng(7)
    s, t = _logits(rng, 64, 10, scale=1.0), _logits(rng, 64, 10, scale=1.0)
    norms = {}
    for T in (2.0, 5.0, 10.0, 20.0):
        x = torch.tensor(s, requires_grad=True)
        soft_kl_loss(x, torch.from_numpy(t), T).backward()
        norms[T] = x.grad.norm().item()
    assert max(norms.values()) / min(norms.values()) < 1.5, norms
    # and the large-T limit: T (q_T - p_T) -> (centred s - centred t) / C
    limit = ((s - s.mean(1, keepdims=True)) - (t - t.mean(1, keepdims=True))) / 10 / 64
    assert norms[20.0] == pytest.approx(np.linalg.norm(limit), rel=0.1)
