"""A tokenizer from a local directory: the one a teacher was saved with.

Read with the `tokenizers` library from the directory's `tokenizer.json` (what
`AutoTokenizer.save_pretrained` writes for every fast tokenizer), never from a
hub: nothing here can reach the network. The special tokens (pad, eos, bos) come
from `tokenizer_config.json` / `special_tokens_map.json` when present.

The fingerprint hashes every file that decides how text becomes ids, so two
teachers (or a teacher and a source) can be checked for one vocabulary, and a
source records exactly which tokenizer made it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transferset.errors import UserError

# Files that decide tokenisation (those present are hashed, in this order).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model")


@dataclass(frozen=True)
class TextTokenizer:
    path: str
    backend: Any  # tokenizers.Tokenizer
    vocab_size: int
    pad_id: int
    eos_id: int | None
    bos_id: int | None
    fingerprint: str

    def encode(self, texts: list[str]) -> list:
        """`tokenizers.Encoding`s (ids, offsets, special-token masks), with the
        tokenizer's own special tokens added as the model saw them in training."""
        return self.backend.encode_batch(texts, add_special_tokens=True)

    def describe(self) -> dict:
        return {"path": self.path, "fingerprint": self.fingerprint, "vocab_size": self.vocab_size,
                "pad_id": self.pad_id, "eos_id": self.eos_id, "bos_id": self.bos_id}


def load_tokenizer(directory: str | Path, flag: str = "--tokenizer") -> TextTokenizer:
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UserError(f"{flag} needs the `tokenizers` package; pip install \"transferset[text]\"") from None
    path = Path(directory)
    if not path.exists():
        raise UserError(f"{flag} {str(path)!r} does not exist; give a local tokenizer directory (nothing is downloaded)")
    folder = path.parent if path.is_file() else path
    file = path if path.is_file() else path / "tokenizer.json"
    if not file.is_file():
        raise UserError(f"{flag} {str(path)!r} has no tokenizer.json; save the tokenizer there with "
                        f"`AutoTokenizer.from_pretrained(...).save_pretrained(DIR)` (a fast tokenizer)")
    try:
        backend = Tokenizer.from_file(str(file))
    except Exception as error:  # the Rust library raises plain Exceptions
        raise UserError(f"{flag} {str(file)!r} is not a tokenizers file ({str(error).splitlines()[0][:120]}); "
                        f"save it again with save_pretrained") from None
    special = _special_tokens(folder)
    ids = {name: _token_id(backend, special.get(name)) for name in ("pad", "eos", "bos")}
    pad = ids["pad"] if ids["pad"] is not None else (ids["eos"] if ids["eos"] is not None else 0)
    return TextTokenizer(str(folder if not path.is_file() else path), backend, backend.get_vocab_size(with_added_tokens=True),
                         pad, ids["eos"], ids["bos"], tokenizer_fingerprint(folder, file))


def tokenizer_fingerprint(folder: Path, file: Path) -> str:
    digest = hashlib.sha256()
    names = [file.name] + [n for n in TOKENIZER_FILES if n != file.name]
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            digest.update(name.encode() + b"\0" + hashlib.sha256(candidate.read_bytes()).digest())
    return digest.hexdigest()


def _special_tokens(folder: Path) -> dict[str, str]:
    """pad/eos/bos token strings, from tokenizer_config.json over special_tokens_map.json."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        try:
            config = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        for key in ("pad", "eos", "bos"):
            value = config.get(f"{key}_token") if isinstance(config, dict) else None
            if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


def _token_id(backend, token: str | None) -> int | None:
    return None if token is None else backend.token_to_id(token)
