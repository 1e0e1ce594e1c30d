"""`convert --text`: a corpus tokenised by a local tokenizer into a Parquet source, one
document per row (padded or truncated) or packed, with attention and target masks
checked against the tokenizer itself and an independent reading of the masks' rules."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, run_cli, shared_dataset
from text_fixtures import SENTENCES, save_tokenizer, write_jsonl

pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    return save_tokenizer(tmp_path_factory.mktemp("tok") / "teacher-a")


def _tokenizer(directory):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(directory / "tokenizer.json"))


def _read(path):
    table = pq.read_table(path)
    rows = lambda name: np.stack(table.column(name).to_numpy(zero_copy_only=False))  # noqa: E731
    meta = json.loads(pq.read_schema(path).metadata[b"transferset.convert"])
    meta.update(json.loads(pq.read_metadata(path).metadata[b"transferset.convert.counts"]))
    return table, rows("input_ids"), rows("attention_mask"), rows("target_mask"), meta


def test_one_document_per_row(tmp_path, tokenizer_dir):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": s, "other": i} for i, s in enumerate(SENTENCES)])
    done = run_cli("convert", "--text", corpus, "--tokenizer", tokenizer_dir, "--max-length", "64", "--out", tmp_path / "c.parquet",
                   "--quiet", check=True)
    assert f"{len(SENTENCES)} rows from {len(SENTENCES)} documents" in done.stdout
    table, ids, attention, target, meta = _read(tmp_path / "c.parquet")
    tok = _tokenizer(tokenizer_dir)
    pad = tok.token_to_id("<pad>")
    for i, sentence in enumerate(SENTENCES):
        expected = tok.encode(sentence).ids
        n = len(expected)
        assert ids[i, :n].tolist() == expected and (ids[i, n:] == pad).all()
        assert attention[i].tolist() == [1] * n + [0] * (64 - n)
        assert target[i].tolist() == [1] * (n - 1) + [0] * (65 - n)  # every position with a next token in the row
    assert table.column("row").to_pylist() == list(range(len(SENTENCES)))
    assert "label" not in table.column_names
    assert meta["tokenizer"]["vocab_size"] == tok.get_vocab_size() and len(meta["tokenizer"]["fingerprint"]) == 64
    assert meta["tokens"] == int(attention.sum()) and meta["target_positions"] == int(target.sum())
    assert meta["mode"] == "rows" and meta["documents"] == len(SENTENCES)


def test_a_prompt_field_masks_the_prompt(tmp_path, tokenizer_dir):
    records = [{"prompt": f"review: {s}\nsentiment:", "answer": " good" if i % 2 else " bad"} for i, s in enumerate(SENTENCES)]
    corpus = write_jsonl(tmp_path / "sft.jsonl", records)
    run_cli("convert", "--text", corpus, "--prompt-field", "prompt", "--text-field", "answer", "--tokenizer", tokenizer_dir,
            "--max-length", "96", "--out", tmp_path / "sft.parquet", "--quiet", check=True)
    _, ids, attention, target, meta = _read(tmp_path / "sft.parquet")
    tok = _tokenizer(tokenizer_dir)
    for i, r in enumerate(records):
        prompt_tokens = len(tok.encode(r["prompt"]).ids)  # the prompt ends at a word boundary: the tokens split there
        n = int(attention[i].sum())
        assert ids[i, :n].tolist() == tok.encode(r["prompt"] + r["answer"]).ids
        # Position t predicts token t + 1: targets from the last prompt token to the one before the last.
        assert np.flatnonzero(target[i]).tolist() == list(range(prompt_tokens - 1, n - 1))
    assert meta["prompt_field"] == "prompt"


def test_added_special_tokens_count_with_their_side(tmp_path):
    tokenizer_dir = save_tokenizer(tmp_path / "bos-eos", bos_eos_template=True)
    corpus = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "q: is it good?\na:", "text": " yes"}])
    run_cli("convert", "--text", corpus, "--prompt-field", "prompt", "--tokenizer", tokenizer_dir, "--max-length", "32",
            "--out", tmp_path / "o.parquet", "--quiet", check=True)
    _, ids, attention, target, _ = _read(tmp_path / "o.parquet")
    tok = _tokenizer(tokenizer_dir)
    n = int(attention[0].sum())
    assert ids[0, 0] == tok.token_to_id("<bos>") and ids[0, n - 1] == tok.token_to_id("<eos>")
    answer = len(tok.encode(" yes", add_special_tokens=False).ids)
    # The prompt (with <bos>) gets no targets; the answer's tokens and the closing <eos> are predicted.
    assert target[0].sum() == answer + 1 and target[0, n - 2] == 1 and target[0, n - 1] == 0


def test_pack_joins_documents_with_eos(tmp_path, tokenizer_dir):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"text": s} for s in SENTENCES])
    run_cli("convert", "--text", corpus, "--tokenizer", tokenizer_dir, "--max-length", "16", "--pack",
            "--out", tmp_path / "p.parquet", "--quiet", check=True)
    table, ids, attention, target, meta = _read(tmp_path / "p.parquet")
    tok = _tokenizer(tokenizer_dir)
    stream = [t for s in SENTENCES for t in tok.encode(s).ids + [tok.token_to_id("<eos>")]]
    rows = -(-len(stream) // 16)
    assert ids.shape == (rows, 16) and attention[:-1].all()
    assert ids.reshape(-1)[:len(stream)].tolist() == stream and attention.sum() == len(stream)
    assert (target[:-1, :15] == 1).all() and (target[:, 15] == 0).all()  # no next token inside the row at the end
    assert meta["tokens"] == len(stream) and table.column("row").to_pylist() == list(range(rows))


def test_tsv_with_labels_and_truncation(tmp_path, tokenizer_dir):
    lines = ["sentence\tlabel"] + [f"{s}\t{i % 2}" for i, s in enumerate(SENTENCES)]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    done = run_cli("convert", "--text", tmp_path / "train.tsv", "--text-field", "sentence", "--label-field", "label",
                   "--tokenizer", tokenizer_dir, "--max-length", "6", "--truncate", "--out", tmp_path / "t.parquet", "--quiet", check=True)
    table, ids, attention, _, meta = _read(tmp_path / "t.parquet")
    tok = _tokenizer(tokenizer_dir)
    assert table.column("label").type == pa.int32() and table.column("label").to_pylist() == [i % 2 for i in range(len(SENTENCES))]
    assert ids[2].tolist() == tok.encode(SENTENCES[2]).ids[:6]  # the quoted sentence is text, quotes and all
    assert meta["truncated_documents"] == sum(len(tok.encode(s).ids) > 6 for s in SENTENCES) > 0
    assert "truncated" in done.stdout


def test_parquet_corpus_gives_the_same_source(tmp_path, tokenizer_dir):
    pq.write_table(pa.table({"text": SENTENCES}), tmp_path / "corpus.parquet")
    write_jsonl(tmp_path / "corpus.jsonl", [{"text": s} for s in SENTENCES])
    for name in ("corpus.parquet", "corpus.jsonl"):
        run_cli("convert", "--text", tmp_path / name, "--tokenizer", tokenizer_dir, "--max-length", "64",
                "--out", tmp_path / f"{name}.out.parquet", "--quiet", check=True)
    a, b = (pq.read_table(tmp_path / f"{n}.out.parquet") for n in ("corpus.parquet", "corpus.jsonl"))
    assert a.equals(b)


@pytest.mark.parametrize("case, expected", [
    ("missing-dir", "does not exist; give a local tokenizer directory"),
    ("no-tokenizer-json", "has no tokenizer.json"),
    ("missing-field", "has no field 'body'"),
    ("null-text", "is null in row 1"),
    ("too-long", "document 0 has"),
    ("pack-with-labels", "--label-field labels documents, but --pack"),
    ("short", "--max-length must be at least 2"),
    ("with-images", "--images is for arrays"),
    ("no-tokenizer", "--text needs --tokenizer DIR"),
    ("bad-label", "is not a class index"),
    ("json-label-text", "cannot be read as json"),
])
def test_bad_text_input(tmp_path, tokenizer_dir, case, expected):
    corpus = write_jsonl(tmp_path / "c.jsonl", [{"text": s, "label": "x" if i == 2 else i % 2} for i, s in enumerate(SENTENCES)])
    (tmp_path / "empty").mkdir()
    nulls = write_jsonl(tmp_path / "nulls.jsonl", [{"text": "fine"}, {"text": None}])
    tsv = tmp_path / "c.tsv"
    tsv.write_text("sentence\tlabel\nfine\t1\nalso fine\t-1\n")
    base = ["--tokenizer", tokenizer_dir, "--max-length", "64"]
    argv = {
        "missing-dir": ["--text", corpus, "--tokenizer", tmp_path / "nowhere", "--max-length", "24"],
        "no-tokenizer-json": ["--text", corpus, "--tokenizer", tmp_path / "empty", "--max-length", "24"],
        "missing-field": ["--text", corpus, "--text-field", "body", *base],
        "null-text": ["--text", nulls, *base],
        "too-long": ["--text", corpus, "--tokenizer", tokenizer_dir, "--max-length", "3"],
        "pack-with-labels": ["--text", corpus, "--label-field", "label", "--pack", *base],
        "short": ["--text", corpus, "--tokenizer", tokenizer_dir, "--max-length", "1"],
        "with-images": ["--text", corpus, "--images", corpus, *base],
        "no-tokenizer": ["--text", corpus, "--max-length", "24"],
        "bad-label": ["--text", tsv, "--text-field", "sentence", "--label-field", "label", *base],
        "json-label-text": ["--text", corpus, "--label-field", "label", *base],
    }[case]
    out = tmp_path / "out.parquet"
    refused = run_cli("convert", *argv, "--out", out)
    assert refused.returncode == 2 and expected in refused.stderr, refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.parquet*"))


def test_sst2_dev_sentences(tmp_path):
    """Real text: GLUE's SST-2 dev split (872 sentences), with a tokenizer trained on it."""
    dev = shared_dataset(ROOT.parent / "shared" / "datasets" / "sst2" / "dev.tsv")
    sentences = [line.split("\t")[0] for line in dev.read_text().splitlines()[1:]]
    tokenizer_dir = save_tokenizer(tmp_path / "sst2-tok", sentences=sentences, vocab_size=2000)
    run_cli("convert", "--text", dev, "--text-field", "sentence", "--label-field", "label", "--tokenizer", tokenizer_dir,
            "--max-length", "80", "--out", tmp_path / "dev.parquet", "--quiet", check=True)
    table, ids, attention, _, meta = _read(tmp_path / "dev.parquet")
    tok = _tokenizer(tokenizer_dir)
    assert table.num_rows == 872 and meta["truncated_documents"] == 0
    assert sorted(set(table.column("label").to_pylist())) == [0, 1]
    for i in (0, 431, 871):
        n = int(attention[i].sum())
        assert ids[i, :n].tolist() == tok.encode(sentences[i]).ids
