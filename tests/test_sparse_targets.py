"""Sparse target kinds, `topk:K` and `sampled:N`: the sparsification of the combined
distribution against NumPy float64, the losses against NumPy and (for samples) for
unbiasedness, and the kinds end to end through generate, inspect, the card and train."""

import re

import numpy as np
import pyarrow.dataset as ds
import pytest
import torch

from conftest import run_cli, run_in_process, write_pixels_source


def _main(*argv) -> tuple[int, str]:
    """The CLI in this process (a fresh interpreter per command costs ~2 s of imports)."""
    done = run_in_process(*argv)
    return done.returncode, done.stderr


from train.losses import kd_loss, sparse_kl_loss
from transferset.sparsify import sample_counts, topk_with_tail

TINY = ["--teacher", "teacher_models:tiny_a", "--teacher", "teacher_models:tiny_b"]
PIXELS = ["--input-column", "pixels", "--input-shape", "1,8,8", "--input-scale", "1/16", "--batch-size", "64", "--quiet"]


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def _logits(rng, rows, vocab, scale):
    z = rng.normal(size=(rows, vocab)) * scale
    z[0] = 0.0  # a flat row: ties everywhere
    z[1, 3] = 1e4  # a certain row: the tail is about exp(-1e4 / T), far below float16
    return z


@pytest.mark.parametrize("k, temperature", [(1, 1.0), (5, 2.0), (31, 0.5)])
def test_topk_and_exact_tail_match_numpy(k, temperature):
    rng = np.random.default_rng(k)
    z = _logits(rng, 40, 32, 4.0)
    ids, lp, tail = topk_with_tail(torch.tensor(z, dtype=torch.float32), temperature, k)
    ref = _np_log_softmax(z / temperature)  # float64
    for row in range(40):
        if row == 0:  # ties: any k ids are right, all with log(1/32)
            np.testing.assert_allclose(lp[0], np.full(k, -np.log(32)), rtol=1e-6)
            continue
        order = np.argsort(-ref[row], kind="stable")[:k]
        assert ids[row].tolist() == order.tolist()
        np.testing.assert_allclose(lp[row], ref[row][order], rtol=1e-5, atol=1e-5)
        rest = np.delete(ref[row], order)
        expected_tail = np.log(np.exp(rest - rest.max()).sum()) + rest.max()
        np.testing.assert_allclose(tail[row], expected_tail, rtol=1e-5, atol=1e-4)
    # The certain row's tail is exact in log space, where 1 - sum(top-k) is 0 in float32.
    assert tail[1] < -1e3 and float(1 - lp[1].exp().sum()) == 0.0


def test_topk_of_the_whole_vocabulary_has_no_tail():
    ids, lp, tail = topk_with_tail(torch.randn(3, 7), 1.0, 7)
    assert torch.isneginf(tail).all() and torch.allclose(lp.exp().sum(-1), torch.ones(3))


def test_samples_are_counts_of_draws_reproducible_and_unbiased():
    rng = np.random.default_rng(0)
    p = np.array([0.5, 0.2, 0.15, 0.1, 0.05, 0.0])
    z = np.log(np.where(p > 0, p, 1e-300))
    rows, n = 20000, 12
    logits = torch.tensor(np.tile(z, (rows, 1)), dtype=torch.float32)
    ids, counts, lp = sample_counts(logits, 1.0, n, seed=3)
    assert (counts.sum(-1) == n).all() and (ids[counts == 0] == ids[:, :1].expand_as(ids)[counts == 0]).all()
    assert not (ids[counts > 0] == 5).any()  # an id of probability 0 is never drawn
    for row in range(50):  # the drawn ids of a row are distinct, most drawn first
        drawn = ids[row][counts[row] > 0].tolist()
        assert len(drawn) == len(set(drawn)) and counts[row].tolist() == sorted(counts[row].tolist(), reverse=True)
    np.testing.assert_allclose(lp[counts > 0].exp(), torch.tensor(p, dtype=torch.float32)[ids[counts > 0]], rtol=1e-5)
    again = sample_counts(logits, 1.0, n, seed=3)
    assert torch.equal(again[0], ids) and torch.equal(again[1], counts)
    assert not torch.equal(sample_counts(logits, 1.0, n, seed=4)[1], counts)
    estimate = torch.zeros(rows, 6, dtype=torch.float64).scatter_add_(1, ids, counts.double() / n).mean(0).numpy()
    sd = np.sqrt(p * (1 - p) / (rows * n))
    assert (np.abs(estimate - p) <= 5 * sd + 1e-12).all(), (estimate, p)


def _np_sparse_kl(student, ids, weights, lp, tail, temperature):
    log_q = _np_log_softmax(student / temperature)
    total = 0.0
    for r in range(len(student)):
        q_support = log_q[r][ids[r]]
        term = sum(w * (l - q) for w, l, q in zip(weights[r], lp[r], q_support) if w > 0)
        if np.isfinite(tail[r]):
            mask = np.ones(student.shape[1], bool)
            mask[ids[r]] = False
            q_tail = np.log(np.exp(log_q[r][mask]).sum())
            term += np.exp(tail[r]) * (tail[r] - q_tail)
        total += term
    return temperature**2 * total / len(student)


def test_topk_loss_is_the_kl_of_the_coarsened_distributions():
    rng = np.random.default_rng(1)
    teacher, student = rng.normal(size=(16, 20)) * 3, rng.normal(size=(16, 20)) * 3
    ids, lp, tail = topk_with_tail(torch.tensor(teacher), 2.0, 4)
    targets = {"support_ids": ids, "support_weights": lp.exp(), "support_logprobs": lp, "tail_logmass": tail}
    got = sparse_kl_loss(torch.tensor(student), targets, 2.0)
    expected = _np_sparse_kl(student, ids.numpy(), lp.exp().numpy(), lp.numpy(), tail.numpy(), 2.0)
    np.testing.assert_allclose(got.item(), expected, rtol=1e-6)
    # Independently: KL between the two distributions over {top 4} + one bucket.
    p = np.exp(_np_log_softmax(teacher / 2.0))
    q = np.exp(_np_log_softmax(student / 2.0))
    kl = 0.0
    for r in range(16):
        top = np.argsort(-p[r])[:4]
        pc = np.append(p[r][top], 1 - p[r][top].sum())
        qc = np.append(q[r][top], 1 - q[r][top].sum())
        kl += (pc * np.log(pc / qc)).sum()
    np.testing.assert_allclose(got.item(), 4.0 * kl / 16, rtol=1e-5)
    # With K = V the loss is the dense KL.
    ids, lp, tail = topk_with_tail(torch.tensor(teacher), 2.0, 20)
    full = sparse_kl_loss(torch.tensor(student), {"support_ids": ids, "support_weights": lp.exp(), "support_logprobs": lp,
                                                  "tail_logmass": tail}, 2.0)
    np.testing.assert_allclose(full.item(), kd_loss(torch.tensor(student), {"target_logits": torch.tensor(teacher)}, 2.0).item(), rtol=1e-6)


def test_sampled_loss_gradient_is_unbiased():
    """The mean gradient over many independent draws equals the full KL's gradient."""
    rng = np.random.default_rng(2)
    teacher = torch.tensor(rng.normal(size=(1, 8)) * 2)
    student = torch.tensor(rng.normal(size=(1, 8)), requires_grad=True)
    full = kd_loss(student, {"target_logits": teacher}, 1.5)
    (full_grad,) = torch.autograd.grad(full, student)
    draws = 4000
    ids, counts, lp = sample_counts(teacher.expand(draws, 8), 1.5, 6, seed=0)
    targets = {"support_ids": ids, "support_weights": counts.double() / 6, "support_logprobs": lp.double(),
               "tail_logmass": torch.full((draws,), float("-inf"), dtype=torch.float64)}
    # The loss is a mean over rows: each row is one independent draw of the estimator.
    loss = sparse_kl_loss(student.expand(draws, 8), targets, 1.5)
    (mean_grad,) = torch.autograd.grad(loss, student)
    per_draw_sd = 2.0 * 1.5**2 / np.sqrt(draws)  # a loose bound on the estimator's spread
    assert torch.allclose(mean_grad, full_grad, atol=per_draw_sd), (mean_grad, full_grad)
    # Its value estimates the KL too (the stored log-probs make it unbiased).
    np.testing.assert_allclose(loss.item(), full.item(), atol=per_draw_sd)
    expected = _np_sparse_kl(np.repeat(student.detach().numpy(), draws, 0), ids.numpy(), (counts / 6).numpy(), lp.numpy(),
                             np.full(draws, -np.inf), 1.5)
    np.testing.assert_allclose(loss.item(), expected, rtol=1e-6)


# -- end to end --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sparse")
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, size=200).tolist()
    labels[::4] = [None] * 50
    source = write_pixels_source(root / "src.parquet", rng.integers(0, 16, size=(200, 64), dtype=np.uint8), labels)
    for name, extra in (("dense", []), ("top3", ["--targets", "topk:3"]), ("s8", ["--targets", "sampled:8"]),
                        ("s8-again", ["--targets", "sampled:8", "--batch-size", "64"])):
        code, err = _main("generate", *TINY, "--source", source, *PIXELS, "--combine", "arithmetic", "-T", "2",
                          "--storage-dtype", "float32", *extra, "--out", root / name)
        assert code == 0, err
    return root


def _columns(directory, *names):
    table = ds.dataset(directory, exclude_invalid_files=True).to_table().sort_by("id")
    return [np.stack(table.column(n).to_numpy(zero_copy_only=False)) if table.column(n).type.num_fields else
            table.column(n).to_numpy() for n in names]


def test_generate_stores_topk_of_the_combined_distribution(sets):
    (dense,) = _columns(sets / "dense", "logits")
    ids, lp, tail = _columns(sets / "top3", "target_token_ids", "target_logprobs", "target_tail_logmass")
    ref = _np_log_softmax(dense.astype(np.float64) / 2.0)  # the combined distribution the dense set stores
    order = np.argsort(-ref, axis=1, kind="stable")[:, :3]
    assert (ids == order).all() and ids.dtype == np.int32
    np.testing.assert_allclose(lp, np.take_along_axis(ref, order, 1), atol=2e-6)
    rest = np.log(1 - np.exp(np.take_along_axis(ref, order, 1)).sum(1))
    np.testing.assert_allclose(tail, rest, atol=1e-5)
    summary = run_cli("inspect", sets / "top3", "--json", check=True).stdout
    import json

    s = json.loads(summary)
    assert s["target_kind"] == "topk" and s["target_options"] == {"k": 3}
    np.testing.assert_allclose(s["mean_tail_mass"], np.exp(tail).mean(), rtol=1e-5)
    dense_summary = json.loads(run_cli("inspect", sets / "dense", "--json", check=True).stdout)
    assert s["ensemble_accuracy"] == dense_summary["ensemble_accuracy"]  # the same top class


def test_sampled_sets_are_reproducible(sets):
    a = _columns(sets / "s8", "target_token_ids", "target_counts", "target_logprobs")
    b = _columns(sets / "s8-again", "target_token_ids", "target_counts", "target_logprobs")
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    ids, counts, lp = a
    assert (counts.sum(1) == 8).all()
    (dense,) = _columns(sets / "dense", "logits")
    ref = _np_log_softmax(dense.astype(np.float64) / 2.0)
    np.testing.assert_allclose(lp[counts > 0], np.take_along_axis(ref, ids.astype(np.int64), 1)[counts > 0], atol=2e-6)


def test_train_from_sparse_sets_and_their_cards(sets, tmp_path, monkeypatch):
    for name in ("top3", "s8"):
        code, err = _main("train", "--transfer", sets / name, "--student-arg", "hidden=8", "--epochs", "1", "--alpha", "0.5",
                          "--out", tmp_path / name, "--quiet")
        assert code == 0, err
        assert (tmp_path / name / "student.pt2").is_file()
        code = re.search(r"```python\n(.*?)```", (sets / name / "README.md").read_text(), re.S).group(1)
        monkeypatch.chdir(sets)
        scope = {}
        exec(compile(code, "README.md", "exec"), scope)
        np.testing.assert_allclose(scope["targets"].sum(1), 1.0, rtol=1e-5)
    code, err = _main("train", "--transfer", sets / "top3", "--temperature", "4", "--out", tmp_path / "t4")
    assert code == 2 and "re-tempering a sparse support is not exact" in err
    code, err = _main("train", "--transfer", sets / "s8", "--loss", "mse", "--out", tmp_path / "mse")
    assert code == 2 and "does not apply to sampled targets" in err


@pytest.mark.parametrize("spec, expected", [
    ("topk:0", "K, the ids kept per row must be positive"),
    ("topk:x", "needs K, the ids kept per row"),
    ("topk:10", "keeps every one of the teachers' 10 classes"),
    ("sampled:40000", "at most 32767 draws per row"),
    ("dense:3", "--targets dense takes no options"),
    ("views:2", "views are made with --views V --augment SPEC"),
])
def test_bad_targets(sets, tmp_path, spec, expected):
    code, err = _main("generate", *TINY, "--source", sets / "src.parquet", *PIXELS, "--targets", spec, "--out", tmp_path / "o")
    assert code == 2 and expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "o" / "_manifest.json").exists() and not list((tmp_path / "o").glob("part-*")) if (tmp_path / "o").exists() else True


def test_decode_refuses_damaged_sparse_columns_and_options_are_checked():
    import pyarrow as pa

    from transferset.errors import UserError
    from transferset.format.codecs import get_codec
    from transferset.format.provenance import Provenance

    def prov(kind, options):
        return Provenance(target_kind=kind, num_classes=10, temperature=1.0, combine="geometric", storage_dtype="float32",
                          teachers=[{"name": "t"}], sources=[{"path": "s"}], input={"columns": ["x"], "shape": [1]},
                          target_options=options)

    topk, sampled = get_codec("topk"), get_codec("sampled")
    columns = topk.encode(torch.randn(4, 10), None, prov("topk", {"k": 3}))
    ids = columns["target_token_ids"]
    bad = pa.FixedSizeListArray.from_arrays(pa.array([0, 1, 12] * 4, pa.int32()), 3)
    table = pa.table({**columns, "target_token_ids": bad})
    with pytest.raises(UserError, match=r"ids outside \[0, 10\)"):
        topk.decode(table, prov("topk", {"k": 3}), "here")
    assert topk.decode(pa.table({**columns, "target_token_ids": ids}), prov("topk", {"k": 3}), "here")["support_ids"].shape == (4, 3)
    columns = sampled.encode(torch.randn(4, 10), None, prov("sampled", {"n": 5, "seed": 0}))
    zero = pa.FixedSizeListArray.from_arrays(pa.array([0] * 20, pa.int16()), 5)
    with pytest.raises(UserError, match="do not add up to 5"):  # a row-level set has no empty positions
        sampled.decode(pa.table({**columns, "target_counts": zero}), prov("sampled", {"n": 5, "seed": 0}), "here")
    for kind, options, expected in (("sampled", {"n": 40000, "seed": 0}, "at most 32767"),
                                    ("sampled", {"n": 5}, "seed must be an integer"),
                                    ("topk", {"k": 3, "extra": 1}, "has no option 'extra'")):
        with pytest.raises(UserError, match=expected):
            get_codec(kind).check_options(options, 10)


def test_chunked_combine_and_sparsify_change_no_bit(monkeypatch):
    """Rows are combined and sparsified a chunk at a time (bounded memory at 150k vocabularies):
    the chunk size must not change a single value."""
    from transferset import combine as combine_module
    from transferset import sparsify

    torch.manual_seed(0)
    members = torch.randn(3, 5, 7, 40) * 4  # [K, B, L, V]
    weights = torch.tensor([0.2, 0.3, 0.5])
    whole = {m: combine_module.combine(members, m, 2.0, weights) for m in ("arithmetic", "geometric")}
    top, drawn = topk_with_tail(whole["arithmetic"], 2.0, 6), sample_counts(whole["arithmetic"], 2.0, 9, seed=1)
    monkeypatch.setattr(combine_module, "CHUNK_VALUES", 3 * 40 * 4)  # 4 positions per chunk
    monkeypatch.setattr(sparsify, "CHUNK_VALUES", 40 * 3)  # 3 positions per chunk
    for method, expected in whole.items():
        assert torch.equal(combine_module.combine(members, method, 2.0, weights), expected)
    for got, expected in zip(topk_with_tail(whole["arithmetic"], 2.0, 6), top):
        assert torch.equal(got, expected)
    for got, expected in zip(sample_counts(whole["arithmetic"], 2.0, 9, seed=1), drawn):
        assert torch.equal(got, expected)
