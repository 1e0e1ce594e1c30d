"""Hugging Face model directories the tests build themselves (no hub, fixed seeds).

`save_model` builds a real 2-layer GPT-2 (imports transformers, ~5 s once per
process); `fake_model` writes only what the loader reads before it loads weights
(a tokenizer, a config.json, a placeholder weights file), for refusals that must
not need transformers at all (the error catalogue)."""

from __future__ import annotations

import json
from pathlib import Path

from text_fixtures import save_tokenizer


def save_model(directory: Path, *, seed: int = 0, classes: int | None = None, sentences=None, tokenizer_size: int = 300) -> Path:
    """A 2-layer GPT-2 (a causal LM, or a classifier with `classes` labels) saved with its tokenizer."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from transferset.text.tokenizer import load_tokenizer

    save_tokenizer(directory, **({"sentences": sentences} if sentences else {}), vocab_size=tokenizer_size)
    tokenizer = load_tokenizer(directory)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=32, vocab_size=tokenizer.vocab_size,
                        bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id,
                        num_labels=classes or 2)
    torch.manual_seed(seed)
    model = GPT2ForSequenceClassification(config) if classes else GPT2LMHeadModel(config)
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def fake_model(directory: Path, weights: str = "model.safetensors", **config) -> Path:
    """A directory that looks like a Llama causal LM up to the point where weights are read:
    `config` entries override config.json's (vocab_size=320, auto_map={...}, architectures=[...])."""
    save_tokenizer(directory)
    written = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 300, **config}
    (directory / "config.json").write_text(json.dumps(written))
    (directory / weights).write_bytes(b"placeholder: never read by a refusal")
    return directory


def edit_config(directory: Path, **changes) -> Path:
    config = json.loads((directory / "config.json").read_text())
    config.update(changes)
    (directory / "config.json").write_text(json.dumps(config))
    return directory
