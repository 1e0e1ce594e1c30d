"""combine.py against an independent NumPy reference (float64, written out by hand)."""

import numpy as np
import pytest
import torch

from transferset.combine import combine, normalised_weights, soft_targets
from transferset.errors import UserError


def np_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def reference(member_logits, method, T, w):
    """The textbook definitions, in float64: the weighted mean of the members'
    probabilities, or their weighted geometric mean renormalised."""
    z = member_logits.astype(np.float64)
    w = np.asarray(w, dtype=np.float64)[:, None, None]
    if method == "arithmetic":
        probs = np.stack([np_softmax(zk / T) for zk in z])  # (K, B, C)
        return (w * probs).sum(axis=0)
    log_probs = np.stack([np_log_softmax(zk / T) for zk in z])  # log, so 1e4 logits stay finite
    return np_softmax((w * log_probs).sum(axis=0))


@pytest.mark.parametrize("method", ["arithmetic", "geometric"])
@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 20.0])
@pytest.mark.parametrize("K,C", [(1, 2), (3, 10), (5, 101)])
def test_matches_numpy_reference(method, T, K, C):
    rng = np.random.default_rng(K * 1000 + C)
    z = rng.normal(0, 5, size=(K, 17, C)).astype(np.float32)
    w = rng.uniform(0.1, 1.0, size=K)
    w = w / w.sum()
    target = combine(torch.from_numpy(z), method, T, torch.tensor(w, dtype=torch.float32))
    got = soft_targets(target, T).numpy()
    want = reference(z, method, T, w)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-7)
    assert target.dtype == torch.float32
    np.testing.assert_allclose(target.max(dim=-1).values.numpy(), 0.0)  # stored rows are shifted to max 0


@pytest.mark.parametrize("method", ["arithmetic", "geometric"])
@pytest.mark.parametrize("T", [1.0, 20.0])
def test_extreme_logits_do_not_overflow(method, T):
    z = np.array([[[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0]], [[1e4, 1e4, -1e4], [0.0, -1e4, 1e4]]], dtype=np.float32)
    target = combine(torch.from_numpy(z), method, T, normalised_weights(None, 2))
    p = soft_targets(target, T).numpy()
    assert np.isfinite(target.numpy()).all() and np.isfinite(p).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    want = reference(z, method, T, [0.5, 0.5])
    np.testing.assert_allclose(p, want, atol=1e-6)


def test_half_precision_members_are_combined_in_float32():
    rng = np.random.default_rng(3)
    z = rng.normal(0, 3, size=(3, 8, 10)).astype(np.float32)
    z16 = torch.from_numpy(z).to(torch.bfloat16)
    target = combine(z16, "arithmetic", 2.0, normalised_weights(None, 3))
    assert target.dtype == torch.float32
    want = reference(z16.float().numpy(), "arithmetic", 2.0, [1 / 3] * 3)
    np.testing.assert_allclose(soft_targets(target, 2.0).numpy(), want, rtol=2e-5, atol=1e-7)


def test_geometric_target_is_valid_at_any_temperature():
    """The geometric mean's T is not baked in: softmax(s / T') == geometric mean at T'."""
    rng = np.random.default_rng(4)
    z = rng.normal(0, 4, size=(4, 9, 7)).astype(np.float32)
    target = combine(torch.from_numpy(z), "geometric", 4.0, normalised_weights(None, 4))
    for T2 in (1.0, 7.5):
        np.testing.assert_allclose(soft_targets(target, T2).numpy(), reference(z, "geometric", T2, [0.25] * 4), rtol=2e-5, atol=1e-7)


def test_single_member_is_its_own_softmax():
    z = np.random.default_rng(5).normal(size=(1, 6, 5)).astype(np.float32)
    for method in ("arithmetic", "geometric"):
        p = soft_targets(combine(torch.from_numpy(z), method, 3.0, normalised_weights(None, 1)), 3.0).numpy()
        np.testing.assert_allclose(p, np_softmax(z[0].astype(np.float64) / 3.0), rtol=1e-5)


def test_bad_weights_and_method_are_user_errors():
    with pytest.raises(UserError, match="teacher weights"):
        normalised_weights([1.0, -1.0], 2)
    with pytest.raises(UserError, match="teacher weights"):
        normalised_weights([1.0], 2)
    with pytest.raises(UserError, match="unknown combine method"):
        combine(torch.zeros(1, 2, 3), "median", 1.0, normalised_weights(None, 1))
