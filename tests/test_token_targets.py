"""Per-token transfer sets: a `convert --text` source through language-model teachers,
stored dense, top-k (with the exact tail) or sampled at every target position, each
checked against the same models run directly and a NumPy float64 combine; and a real
Hugging Face GPT-2 through `--teacher hf:DIR`."""

import re

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

import teacher_models
from conftest import run_cli
from text_fixtures import SENTENCES, save_tokenizer, write_jsonl

pytest.importorskip("tokenizers")
LM = ["--teacher", "teacher_models:tiny_lm_a", "--teacher", "teacher_models:tiny_lm_b", "--teacher-weight", "3"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tokens")
    tokenizer = save_tokenizer(root / "tok")
    records = [{"prompt": f"review {i}:", "text": " " + s} for i, s in enumerate(SENTENCES + SENTENCES[:3])]
    run_cli("convert", "--text", write_jsonl(root / "c.jsonl", records), "--prompt-field", "prompt", "--tokenizer", tokenizer,
            "--max-length", "48", "--out", root / "src.parquet", "--quiet", check=True)
    return root


def _source(root):
    table = pq.read_table(root / "src.parquet")
    get = lambda name: np.stack(table.column(name).to_numpy(zero_copy_only=False)).astype(np.int64)  # noqa: E731
    return get("input_ids"), get("attention_mask"), get("target_mask").astype(bool)


def _reference_log_probs(root, temperature=2.0):
    """log p [rows, L, V] of the arithmetic mean (weights 1:3) at T, in float64."""
    ids, attention, _ = _source(root)
    with torch.no_grad():
        z = [m(torch.tensor(ids), torch.tensor(attention)).double().numpy() for m in (teacher_models.tiny_lm_a(), teacher_models.tiny_lm_b())]
    log_p = [zi / temperature - np.logaddexp.reduce(zi / temperature, axis=-1, keepdims=True) for zi in z]
    return np.logaddexp(np.log(0.25) + log_p[0], np.log(0.75) + log_p[1])


def _stored(directory, *names):
    table = ds.dataset(directory, exclude_invalid_files=True).to_table()
    order = np.argsort(np.array(table.column("id").to_pylist(), dtype=object).astype(str), kind="stable")
    rows = [int(i.split(":")[1]) for i in table.column("id").to_pylist()]
    order = np.argsort(rows)
    out = []
    for name in names:
        values = table.column(name).combine_chunks()
        shape = [len(table)]
        while hasattr(values.type, "list_size"):
            shape.append(values.type.list_size)
            values = values.flatten()
        out.append(values.to_numpy(zero_copy_only=False).reshape(shape)[order])
    return out


@pytest.fixture(scope="module")
def sets(corpus):
    for name, targets in (("top4", "topk:4"), ("dense", "dense"), ("s6", "sampled:6")):
        run_cli("generate", *LM, "--source", corpus / "src.parquet", "--targets", targets, "--combine", "arithmetic", "-T", "2",
                "--storage-dtype", "float32", "--batch-size", "3", "--out", corpus / name, "--quiet", check=True)
    return corpus


def test_topk_per_token_is_of_the_combined_distribution(sets):
    _, _, mask = _source(sets)
    ref = _reference_log_probs(sets)
    ids, lp, tail, stored_mask = _stored(sets / "top4", "target_token_ids", "target_logprobs", "target_tail_logmass", "target_mask")
    assert ids.shape == (11, 48, 4) and tail.shape == (11, 48) and (stored_mask.astype(bool) == mask).all()
    order = np.argsort(-ref, axis=-1, kind="stable")[..., :4]
    assert (ids[mask] == order[mask]).all()
    np.testing.assert_allclose(lp[mask], np.take_along_axis(ref, order, -1)[mask], atol=2e-5)
    rest = np.log1p(-np.exp(np.take_along_axis(ref, order, -1)).sum(-1))
    np.testing.assert_allclose(tail[mask], rest[mask], atol=2e-4)
    assert (ids[~mask] == 0).all() and (lp[~mask] == 0).all() and (tail[~mask] == 0).all()


def test_dense_and_sampled_per_token(sets):
    _, _, mask = _source(sets)
    ref = _reference_log_probs(sets)
    (logits,) = _stored(sets / "dense", "logits")
    assert logits.shape == (11, 48, 300)
    stored = torch.log_softmax(torch.tensor(logits[mask]) / 2, dim=-1).numpy()
    np.testing.assert_allclose(stored, ref[mask], atol=2e-5)
    assert (logits[~mask] == 0).all()
    ids, counts, lp = _stored(sets / "s6", "target_token_ids", "target_counts", "target_logprobs")
    assert (counts[mask].sum(-1) == 6).all() and (counts[~mask] == 0).all()
    drawn = counts[mask] > 0
    np.testing.assert_allclose(lp[mask][drawn], np.take_along_axis(ref[mask], ids[mask].astype(np.int64), -1)[drawn], atol=2e-5)


def test_per_token_sets_are_listed_carded_and_refused_where_not_read_yet(sets, tmp_path, monkeypatch):
    listed = run_cli("ls", sets, check=True).stdout
    assert "topk" in listed and "300 tokens x 48 positions" in listed
    code = re.search(r"```python\n(.*?)```", (sets / "top4" / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(sets)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert tuple(scope["ids"].shape) == (11, 48, 4) and tuple(scope["target_mask"].shape) == (11, 48)
    assert 'task_categories:\n- "text-generation"' in (sets / "top4" / "README.md").read_text()
    for argv, expected in ((["train", "--transfer", sets / "top4", "--out", tmp_path / "run"], "is a class-target student, but this transfer set holds per-token targets"),
                           (["report", sets / "top4", "--out", tmp_path / "report"], "`transferset report` draws class-target sets only"),
                           (["generate", *LM, "--source", sets / "src.parquet", "--keep-teacher-logits", "--out", tmp_path / "k"],
                            "--keep-teacher-logits stores every member's [length, vocab] logits")):
        refused = run_cli(*argv)
        assert refused.returncode == 2 and expected in refused.stderr and refused.stderr.count("\n") == 1, refused.stderr


def test_hugging_face_gpt2_teacher(tmp_path):
    pytest.importorskip("transformers")
    from hf_fixtures import save_model

    model_dir = save_model(tmp_path / "gpt2-tiny", seed=3)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": s} for s in SENTENCES[:5]])
    run_cli("convert", "--text", corpus, "--tokenizer", model_dir, "--max-length", "32", "--truncate", "--out", tmp_path / "src.parquet",
            "--quiet", check=True)
    run_cli("generate", "--teacher", f"hf:{model_dir}", "--source", tmp_path / "src.parquet", "--targets", "topk:5",
            "--storage-dtype", "float32", "--out", tmp_path / "set", "--quiet", check=True)
    ids_in, attention, mask = _source(tmp_path)
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.no_grad():
        logits = model(input_ids=torch.tensor(ids_in), attention_mask=torch.tensor(attention)).logits.double()
    ref = torch.log_softmax(logits, dim=-1).numpy()
    ids, lp = _stored(tmp_path / "set", "target_token_ids", "target_logprobs")
    order = np.argsort(-ref, axis=-1, kind="stable")[..., :5]
    assert (ids[mask] == order[mask]).all()
    np.testing.assert_allclose(lp[mask], np.take_along_axis(ref, order, -1)[mask], atol=2e-5)
    # A source tokenised by another tokenizer is refused before any model runs on it.
    other = save_tokenizer(tmp_path / "other-tok", sentences=["something else entirely ."], vocab_size=280)
    run_cli("convert", "--text", corpus, "--tokenizer", other, "--max-length", "32", "--truncate", "--out", tmp_path / "other.parquet",
            "--quiet", check=True)
    refused = run_cli("generate", "--teacher", f"hf:{model_dir}", "--source", tmp_path / "other.parquet", "--out", tmp_path / "x")
    assert refused.returncode == 2 and "convert the corpus again with --tokenizer" in refused.stderr, refused.stderr


def test_a_sequence_classifier_over_tokens_gives_class_targets(tmp_path):
    """Token inputs do not make a set per-token: what the teachers return does."""
    pytest.importorskip("transformers")
    from hf_fixtures import save_model
    from transformers import GPT2ForSequenceClassification

    model_dir = save_model(tmp_path / "cls", seed=4, classes=3)
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": s} for s in SENTENCES])
    run_cli("convert", "--text", corpus, "--tokenizer", model_dir, "--max-length", "32", "--truncate", "--out", tmp_path / "src.parquet",
            "--quiet", check=True)
    run_cli("generate", "--teacher", f"hf:{model_dir}", "--source", tmp_path / "src.parquet", "--storage-dtype", "float32",
            "--out", tmp_path / "set", "--quiet", check=True)
    ids_in, attention, _ = _source(tmp_path)
    model = GPT2ForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
    with torch.no_grad():
        expected = torch.log_softmax(model(input_ids=torch.tensor(ids_in), attention_mask=torch.tensor(attention)).logits, -1)
    (logits,) = _stored(tmp_path / "set", "logits")
    assert logits.shape == (len(SENTENCES), 3)
    np.testing.assert_allclose(torch.log_softmax(torch.tensor(logits), -1), expected, atol=1e-5)
    summary = run_cli("inspect", tmp_path / "set", "--json", check=True).stdout
    assert '"num_classes": 3' in summary
    assert 'task_categories:\n- "text-classification"' in (tmp_path / "set" / "README.md").read_text()


def test_batches_by_token_budget(sets, tmp_path):
    import json

    run_cli("generate", *LM, "--source", sets / "src.parquet", "--targets", "topk:4", "--combine", "arithmetic", "-T", "2",
            "--storage-dtype", "float32", "--max-tokens-per-batch", "150", "--out", tmp_path / "budget", "--quiet", check=True)
    manifest = json.loads((tmp_path / "budget" / "_manifest.json").read_text())
    assert manifest["provenance"]["batch_size"] == 3  # 150 // 48 tokens per row
    a = _stored(tmp_path / "budget", "target_token_ids", "target_logprobs")
    b = _stored(sets / "top4", "target_token_ids", "target_logprobs")  # made with --batch-size 3
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
