"""Tiny tokenizers and corpora the text tests build themselves (no hub, fixed content)."""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "the film is a charming and often affecting journey .",
    "it 's a bad sign when you 're rooting for the villain .",
    "an utterly \"compelling\" story , told with grace and wit .",
    "the plot is paper thin and the jokes fall flat .",
    "a gorgeous , witty , seductive movie .",
    "nothing happens , and it happens slowly .",
    "one of the year 's best films .",
    "too long , too loud and too dumb .",
]


def save_tokenizer(directory: Path, sentences=SENTENCES, vocab_size: int = 300, bos_eos_template: bool = False) -> Path:
    """A byte-level BPE trained on `sentences`, saved as a Hugging Face fast tokenizer
    directory (tokenizer.json + tokenizer_config.json); with `bos_eos_template`, the
    tokenizer adds <bos> ... <eos> around every document, as some models' do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<unk>", "<eos>", "<bos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(sentences, trainer)
    if bos_eos_template:
        bos, eos = tokenizer.token_to_id("<bos>"), tokenizer.token_to_id("<eos>")
        tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", bos), ("<eos>", eos)])
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"pad_token": "<pad>", "eos_token": "<eos>", "bos_token": "<bos>"}))
    return directory


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path
