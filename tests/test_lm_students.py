"""Causal-LM students on per-token transfer sets: the per-token losses against NumPy, the
sampled estimator's unbiasedness over positions, the GPT student, batching by tokens,
exact mid-epoch resume, eval's per-token metrics, and the refusals; end to end
convert --text -> generate (factory LM teachers) -> train -> eval."""

import json

import numpy as np
import pytest
import torch

import cli
from conftest import run_cli
from text_fixtures import SENTENCES, save_tokenizer, write_jsonl
from train.gpt import gpt
from train.lm_losses import LOG_P_FLOOR, lm_distillation_loss, next_token_ce, token_soft_loss
from transferset.sparsify import sample_counts, topk_with_tail

pytest.importorskip("tokenizers")
LM = ["--teacher", "teacher_models:tiny_lm_a", "--teacher", "teacher_models:tiny_lm_b"]
GPT = ["--student", "train.students:gpt", "--student-arg", "width=32", "--student-arg", "layers=2"]
L, V = 32, 300


# -- NumPy references ---------------------------------------------------------------------


def _np_log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _np_divergence(log_p, log_q, kind):
    """Per position over the last axis, float64."""
    p, q = np.exp(log_p), np.exp(log_q)
    with np.errstate(divide="ignore", invalid="ignore"):
        if kind == "kd":
            return np.where(p > 0, p * (log_p - log_q), 0).sum(-1)
        if kind == "reverse-kl":
            return np.where(q > 0, q * (log_q - np.maximum(log_p, LOG_P_FLOOR)), 0).sum(-1)
        m = (p + q) / 2
        return 0.5 * np.where(p > 0, p * np.log(p / m), 0).sum(-1) + 0.5 * np.where(q > 0, q * np.log(q / m), 0).sum(-1)


def _tokens(rng, b, length, vocab):
    """int64 [B, 3, L] with a few masked positions and one row without any target."""
    ids = rng.integers(0, vocab, size=(b, length))
    target = (rng.random((b, length)) < 0.7).astype(np.int64)
    target[-1] = 0
    return torch.tensor(np.stack([ids, np.ones_like(ids), target], axis=1))


def _positions(tokens):
    mask = tokens[:, 2].numpy().astype(bool).copy()
    mask[:, -1] = False
    return mask


@pytest.mark.parametrize("kind", ["kd", "reverse-kl", "jsd"])
def test_dense_token_losses_match_numpy(kind):
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(4, 6, 11)) * 2, rng.normal(size=(4, 6, 11)) * 3
    teacher[0, 0, 3] = -np.inf  # a class of probability 0
    tokens = _tokens(rng, 4, 6, 11)
    got = token_soft_loss(torch.tensor(student), {"target_logits": torch.tensor(teacher)}, tokens, 2.0, kind)
    mask = _positions(tokens)
    per_position = _np_divergence(_np_log_softmax(teacher / 2), _np_log_softmax(student / 2), kind)
    # the mean over the batch's target positions, not a mean of row means
    np.testing.assert_allclose(got.item(), 4.0 * per_position[mask].mean(), rtol=1e-6)


@pytest.mark.parametrize("targets_kind", ["dense", "topk"])
def test_chunked_losses_equal_the_whole_batch_forms_with_their_gradients(monkeypatch, targets_kind):
    """Target positions taken 2 at a time (checkpointed chunks) give the one-chunk loss
    and gradient: the chunking changes memory, not the result."""
    from train import lm_losses

    rng = np.random.default_rng(5)
    student, teacher = rng.normal(size=(3, 7, 13)) * 2, rng.normal(size=(3, 7, 13)) * 3
    tokens = _tokens(rng, 3, 7, 13)
    if targets_kind == "dense":
        targets = {"target_logits": torch.tensor(teacher)}
    else:
        lp = torch.log_softmax(torch.tensor(teacher), -1)
        top, ids = lp.topk(4, dim=-1)
        targets = {"support_ids": ids, "support_weights": top.exp(), "support_logprobs": top,
                   "tail_logmass": torch.logsumexp(lp.scatter(-1, ids, float("-inf")), -1)}

    def loss_and_grad():
        logits = torch.tensor(student, requires_grad=True)
        loss, _ = lm_distillation_loss(logits, targets, tokens, alpha=0.6, temperature=2.0, kind="jsd")
        loss.backward()
        return loss.detach(), logits.grad

    whole = loss_and_grad()
    monkeypatch.setattr(lm_losses, "CHUNK_VALUES", 2 * 13)  # 2 positions per chunk
    chunked = loss_and_grad()
    torch.testing.assert_close(chunked[0], whole[0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(chunked[1], whole[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["kd", "reverse-kl", "jsd"])
def test_topk_token_losses_are_the_coarsened_divergences(kind):
    rng = np.random.default_rng(1)
    student, teacher = rng.normal(size=(3, 5, 20)), rng.normal(size=(3, 5, 20)) * 2
    tokens = _tokens(rng, 3, 5, 20)
    ids, lp, tail = topk_with_tail(torch.tensor(teacher).reshape(15, 20), 2.0, 4)
    targets = {"support_ids": ids.reshape(3, 5, 4), "support_weights": lp.exp().reshape(3, 5, 4), "support_logprobs": lp.reshape(3, 5, 4),
               "tail_logmass": tail.reshape(3, 5)}
    got = token_soft_loss(torch.tensor(student), targets, tokens, 2.0, kind)
    # Independently: both distributions coarsened to {top 4} + one bucket.
    p, q = np.exp(_np_log_softmax(teacher / 2)), np.exp(_np_log_softmax(student / 2))
    expected = []
    for r, t in zip(*np.nonzero(_positions(tokens))):
        top = np.argsort(-p[r, t])[:4]
        pc, qc = np.append(p[r, t][top], 1 - p[r, t][top].sum()), np.append(q[r, t][top], 1 - q[r, t][top].sum())
        expected.append(_np_divergence(np.log(pc), np.log(qc), kind))
    np.testing.assert_allclose(got.item(), 4.0 * np.mean(expected), rtol=1e-5)


def test_sampled_token_loss_is_unbiased_over_positions():
    """Each row is one independent draw at every position: the mean over rows and target
    positions of the sampled loss (value and gradient) is the dense per-token KL's."""
    rng = np.random.default_rng(2)
    positions, vocab, draws, n = 4, 8, 3000, 6
    teacher = torch.tensor(rng.normal(size=(1, positions, vocab)) * 2)
    student = torch.tensor(rng.normal(size=(1, positions, vocab)), requires_grad=True)
    tokens = torch.tensor([[[1] * positions, [1] * positions, [1, 0, 1, 1]]])  # targets at 0 and 2 (3 is the last)
    full = token_soft_loss(student, {"target_logits": teacher}, tokens, 1.5)
    (full_grad,) = torch.autograd.grad(full, student)
    ids, counts, lp = sample_counts(teacher.expand(draws, positions, vocab).reshape(-1, vocab), 1.5, n, seed=0)
    targets = {"support_ids": ids.reshape(draws, positions, -1), "support_weights": counts.double().reshape(draws, positions, -1) / n,
               "support_logprobs": lp.double().reshape(draws, positions, -1),
               "tail_logmass": torch.full((draws, positions), float("-inf"), dtype=torch.float64)}
    loss = token_soft_loss(student.expand(draws, positions, vocab), targets, tokens.expand(draws, 3, positions), 1.5)
    (mean_grad,) = torch.autograd.grad(loss, student)
    spread = 2.0 * 1.5**2 / np.sqrt(draws)
    assert torch.allclose(mean_grad, full_grad, atol=spread), (mean_grad, full_grad)
    assert mean_grad[0, 1].abs().max() == 0 and mean_grad[0, 3].abs().max() == 0  # untargeted positions get no gradient
    np.testing.assert_allclose(loss.item(), full.item(), atol=spread)
    # and its value is sum (count / N)(log p - log q) at the target positions, in NumPy
    log_q = _np_log_softmax(student.detach().numpy()[0] / 1.5)  # [L, V]
    w, lp_np, ids_np = (targets[k].numpy() for k in ("support_weights", "support_logprobs", "support_ids"))
    per_draw = [(w[:, t] * (lp_np[:, t] - log_q[t][ids_np[:, t]])).sum(-1) for t in (0, 2)]  # [draws] each
    np.testing.assert_allclose(loss.item(), 1.5**2 * np.mean(per_draw), rtol=1e-6)


def test_next_token_cross_entropy_and_the_alpha_mix():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(3, 7, 13))
    tokens = _tokens(rng, 3, 7, 13)
    mask, ids = _positions(tokens), tokens[:, 0].numpy()
    log_q = _np_log_softmax(logits)
    expected = np.mean([-log_q[r, t, ids[r, t + 1]] for r, t in zip(*np.nonzero(mask))])
    np.testing.assert_allclose(next_token_ce(torch.tensor(logits), tokens).item(), expected, rtol=1e-6)
    targets = {"target_logits": torch.tensor(rng.normal(size=(3, 7, 13)))}
    loss, parts = lm_distillation_loss(torch.tensor(logits), targets, tokens, alpha=0.3, temperature=2.0)
    np.testing.assert_allclose(loss.item(), 0.3 * parts["soft"].item() + 0.7 * expected, rtol=1e-6)
    # a batch without target positions costs 0, with the graph kept
    none = tokens.clone()
    none[:, 2] = 0
    x = torch.tensor(logits, requires_grad=True)
    zero, _ = lm_distillation_loss(x, targets, none, alpha=0.5, temperature=2.0)
    zero.backward()
    assert zero.item() == 0 and x.grad.abs().max() == 0


def test_gpt_is_causal_and_ignores_padding():
    torch.manual_seed(0)
    model = gpt(num_classes=50, input_shape=(10,), width=16, layers=2, heads=2).eval()
    ids = torch.randint(0, 50, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    out = model(ids, mask)
    changed = ids.clone()
    changed[:, 4] = (changed[:, 4] + 1) % 50  # a later token
    changed[1, 8] = (changed[1, 8] + 1) % 50  # a padding token
    again = model(changed, mask)
    assert torch.equal(out[:, :4], again[:, :4]) and not torch.allclose(out[:, 4], again[:, 4])
    assert torch.allclose(out[1, :6][torch.arange(6) < 4], again[1, :4])
    assert torch.isfinite(out).all() and out.shape == (2, 10, 50)


# -- end to end ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tokenizer = save_tokenizer(root / "tok")
    write_jsonl(root / "train.jsonl", [{"text": " " + s} for s in SENTENCES * 4])
    write_jsonl(root / "held.jsonl", [{"text": " " + s} for s in SENTENCES[::-1]])
    for name in ("train", "held"):
        assert cli.main(["convert", "--text", str(root / f"{name}.jsonl"), "--tokenizer", str(tokenizer), "--max-length", str(L), "--pack",
                         "--out", str(root / f"{name}.parquet"), "--quiet"]) == 0
    for name, targets in (("top8", "topk:8"), ("s4", "sampled:4")):
        assert cli.main(["generate", *LM, "--source", str(root / "train.parquet"), "--targets", targets, "--row-group-rows", "8",
                         "--out", str(root / name), "--quiet"]) == 0
    return root


def _train(lm, out, *extra, student=GPT):
    return cli.main(["train", "--transfer", str(lm / "top8"), *student, "--optimizer", "adamw", "--lr", "3e-3", "--tokens-per-batch", "256",
                     "--out", str(out), "--quiet", *extra])


def test_train_and_eval_a_gpt_student_end_to_end(lm, tmp_path):
    out = tmp_path / "run"
    assert _train(lm, out, "--alpha", "0.5", "--epochs", "6", "--eval", str(lm / "held.parquet")) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["batch_size"] == 8 and config["resolved"]["steps_per_epoch"] == 4  # 256 // 32 rows; 29 rows
    evaluated = run_cli("eval", out, "--data", lm / "held.parquet", "--json", check=True)
    held = json.loads(evaluated.stdout)
    assert held["positions"] == 219 and held["labelled"] == 0 and "agreement" not in held
    # an untrained student (the same init) on the same text
    from train.data import open_eval_data
    from train.metrics import evaluate
    from transferset.inputs import InputSpec

    torch.manual_seed(0)
    untrained = gpt(num_classes=V, input_shape=(L,), width=32, layers=2)
    source = open_eval_data(str(lm / "held.parquet"), InputSpec.for_tokens(L), "label", V, per_token=True)
    before = evaluate(untrained, source.epoch(batch_size=64, seed=0, epoch=0, shuffle=False), num_classes=V, device=torch.device("cpu"))
    assert held["nll"] < before["nll"] - 0.3, (held["nll"], before["nll"])
    np.testing.assert_allclose(held["perplexity"], np.exp(held["nll"]), rtol=1e-9)
    # on the transfer set itself: top-1 agreement with the teachers
    on_set = json.loads(run_cli("eval", out, "--data", lm / "top8", "--json", check=True).stdout)
    assert 0 <= on_set["agreement"] <= 1 and on_set["positions"] == 879
    # the exported program takes (input_ids, attention_mask) and gives the student's logits
    program = torch.export.load(str(out / "student.pt2")).module()
    ids = torch.randint(0, V, (3, L))
    model = gpt(num_classes=V, input_shape=(L,), width=32, layers=2)
    model.load_state_dict(torch.load(out / "student.pt", weights_only=True))
    assert torch.allclose(program(ids, torch.ones_like(ids)), model.eval()(ids, torch.ones_like(ids)), atol=1e-5)


def test_mid_epoch_resume_is_bit_identical(lm, tmp_path):
    from train import checkpoint as ckpt

    full = tmp_path / "full"
    assert _train(lm, full, "--epochs", "2", "--checkpoint-every", "2", "--keep-checkpoints", "10", "--loss", "jsd") == 0
    checkpoint = ckpt.checkpoint_path(full / "checkpoints", 6)  # epoch 2, batch 2 of 4
    assert ckpt.load_checkpoint(checkpoint)["position"] == {"epoch": 1, "batch_in_epoch": 2, "step": 6}
    resumed = tmp_path / "resumed"
    assert _train(lm, resumed, "--epochs", "2", "--checkpoint-every", "2", "--loss", "jsd", "--resume", str(checkpoint)) == 0
    want, got = torch.load(full / "student.pt", weights_only=True), torch.load(resumed / "student.pt", weights_only=True)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_two_processes_train_the_single_process_gpt_student(lm, tmp_path):
    """torchrun, 2 ranks: 29 rows in global batches of 8 (the last 3 + 2 rows), so the
    ranks hold unequal target positions and the loss weighting must all-reduce them."""
    from conftest import run_torchrun

    one, two = tmp_path / "one", tmp_path / "two"
    assert _train(lm, one, "--alpha", "0.5", "--epochs", "1", "--device", "cpu") == 0
    proc = run_torchrun("train", "--transfer", lm / "top8", *GPT, "--optimizer", "adamw", "--lr", "3e-3", "--tokens-per-batch", "256",
                        "--alpha", "0.5", "--epochs", "1", "--device", "cpu", "--quiet", "--out", two)
    assert proc.returncode == 0, proc.stderr[-3000:]
    want, got = torch.load(one / "student.pt", weights_only=True), torch.load(two / "student.pt", weights_only=True)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("argv, expected", [
    (["--tokens-per-batch", "20"], "--tokens-per-batch 20 is less than one row of this set (32 tokens)"),
    (["--tokens-per-batch", "64", "--batch-size", "4"], "give --batch-size (rows) or --tokens-per-batch (tokens), not both"),
    (["--student", "train.students:mlp"], "--student train.students:mlp is a class-target student"),
    (["--student", "test_lm_students:wrong_vocabulary"], "outputs 301 logits per position but the transfer set's vocabulary has 300"),
    (["--student", "test_lm_students:not_a_language_model"], "is not a causal language model for this per-token set"),
    (["--loss", "mse"], "--loss mse does not apply to per-token topk targets; use --loss kd or reverse-kl or jsd"),
    (["--temperature", "3"], "store probabilities at T=1.0 only"),
])
def test_refusals_on_a_per_token_set(lm, tmp_path, capsys, argv, expected):
    student = [] if "--student" in argv else GPT
    assert cli.main(["train", "--transfer", str(lm / "top8"), *student, *argv, "--out", str(tmp_path / "run"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_refusals_of_sampled_reverse_kl_and_tokens_on_class_targets(lm, tmp_path, capsys):
    assert cli.main(["train", "--transfer", str(lm / "s4"), *GPT, "--loss", "reverse-kl", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "--loss reverse-kl does not apply to per-token sampled targets; use --loss kd" in capsys.readouterr().err
    from conftest import write_pixels_source

    rng = np.random.default_rng(0)
    source = write_pixels_source(tmp_path / "px.parquet", rng.integers(0, 9, size=(20, 4), dtype=np.uint8), rng.integers(0, 3, size=20).tolist())
    assert cli.main(["train", "--data", str(source), "--input-shape", "4", "--tokens-per-batch", "64", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "--tokens-per-batch applies to per-token (language-model) sets" in capsys.readouterr().err


def test_hugging_face_student_from_a_config(lm, tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=L, vocab_size=V, bos_token_id=3, eos_token_id=2)
    config.save_pretrained(tmp_path / "student")
    out = tmp_path / "run"
    assert _train(lm, out, "--epochs", "1", student=["--student", f"hf:{tmp_path / 'student'}"]) == 0
    held = json.loads(run_cli("eval", out, "--data", lm / "held.parquet", "--json", check=True).stdout)
    assert held["positions"] == 219 and np.isfinite(held["nll"])
    transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=L, vocab_size=V + 20, bos_token_id=3, eos_token_id=2).save_pretrained(tmp_path / "wide")
    from train.lm_students import build_lm_student
    from transferset.errors import UserError

    with pytest.raises(UserError, match="outputs 320 logits per position but the transfer set's vocabulary has 300 tokens"):
        build_lm_student(f"hf:{tmp_path / 'wide'}", {}, V, L)


# -- students the refusal tests name -----------------------------------------------------


def wrong_vocabulary(num_classes, input_shape):
    return gpt(num_classes=num_classes + 1, input_shape=input_shape, width=16, layers=1)


def not_a_language_model(num_classes, input_shape):
    return torch.nn.Linear(input_shape[0], num_classes)


# -- inspect ---------------------------------------------------------------------------------


def _columns(directory, *names):
    import pyarrow.dataset as ds

    table = ds.dataset(directory, exclude_invalid_files=True).to_table()
    out = []
    for name in names:
        values, shape = table.column(name).combine_chunks(), [len(table)]
        while hasattr(values.type, "list_size"):
            shape.append(values.type.list_size)
            values = values.flatten()
        out.append(values.to_numpy(zero_copy_only=False).reshape(shape))
    return out


@pytest.mark.parametrize("name", ["top8", "s4"])
def test_inspect_summarises_per_token_sets(lm, capsys, monkeypatch, name):
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the table to the terminal's width
    assert cli.main(["inspect", str(lm / name), "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    ids, attention, mask, support, lp = _columns(lm / name, "input_ids", "attention_mask", "target_mask", "target_token_ids", "target_logprobs")
    mask = mask.astype(bool)
    following = np.concatenate([ids[:, 1:], np.zeros_like(ids[:, :1])], axis=1)
    assert (s["rows"], s["tokens"], s["target_positions"]) == (29, int(attention.sum()), int(mask.sum())) == (29, 908, 879)
    np.testing.assert_allclose(s["teacher_top1_next_token"], (support[..., 0] == following)[mask].mean())
    lp = lp.astype(np.float64)
    if name == "top8":  # the K ids plus the tail bucket
        (tail,) = _columns(lm / name, "target_tail_logmass")
        entropy = -(np.exp(lp) * lp).sum(-1) - np.exp(tail) * tail
        np.testing.assert_allclose(s["mean_tail_mass"], np.exp(tail)[mask].mean(), rtol=1e-5)
    else:  # sum (count / N) * -log p: the unbiased estimate
        (counts,) = _columns(lm / name, "target_counts")
        entropy = -(counts / 4 * lp).sum(-1)
        assert s["mean_tail_mass"] is None
    np.testing.assert_allclose(s["mean_entropy_nats"], entropy[mask].mean(), rtol=1e-5)
    assert s["bytes_per_token"] == pytest.approx(s["bytes"] / 908)
    assert cli.main(["inspect", str(lm / name)]) == 0
    shown = capsys.readouterr().out
    assert "879 target positions" in shown and "teacher top-1 = next token" in shown


def test_chunked_loss_gradient_survives_fp16_and_refuses_a_second_backward():
    """The chunk's gradient is taken in float32 and cast after the loss scale: an fp16
    student's small gradients do not flush to 0 (as they would if rounded unscaled)."""
    rng = np.random.default_rng(9)
    tokens = _tokens(rng, 8, 64, 500)
    logits32 = torch.tensor(rng.normal(size=(8, 64, 500)), dtype=torch.float32, requires_grad=True)
    teacher = {"target_logits": torch.tensor(rng.normal(size=(8, 64, 500)) * 2, dtype=torch.float32)}
    loss, _ = lm_distillation_loss(logits32, teacher, tokens, alpha=0.5, temperature=1.0)
    (loss * 65536).backward()
    logits16 = logits32.detach().half().requires_grad_()
    loss16, _ = lm_distillation_loss(logits16, teacher, tokens, alpha=0.5, temperature=1.0)
    (loss16 * 65536).backward(retain_graph=True)
    want = (logits32.grad).half()  # the scaled float32 gradient, rounded once
    assert (logits16.grad == 0).float().mean() <= (want == 0).float().mean() + 0.01
    torch.testing.assert_close(logits16.grad.float(), logits32.grad, rtol=2e-2, atol=2e-2)
    with pytest.raises(RuntimeError, match="one backward per forward"):
        (loss16 * 65536).backward()
