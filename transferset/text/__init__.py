"""Text: corpora -> token sources (`convert --text`), and recognising a token source.

A source written by `convert --text` says so in its metadata (`kind: text`), with
its tokenizer and row length; `generate` feeds such a source to language models as
token inputs (`InputSpec.for_tokens`) without any --input-* flag.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from transferset.source_writer import METADATA_KEY


def text_metadata(path: str) -> dict | None:
    """The `convert --text` metadata of a source file, or None for any other file."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else None
    except (OSError, ValueError, pa.ArrowInvalid):
        return None  # not for us to report here: the source checks name what is wrong
    return meta if isinstance(meta, dict) and meta.get("kind") == "text" else None


def token_spec(paths: list[str]):
    """InputSpec.for_tokens(L) when the first source is a token source, else None."""
    from transferset.inputs import InputSpec

    meta = text_metadata(paths[0]) if paths else None
    length = meta.get("max_length") if meta else None
    return InputSpec.for_tokens(length) if isinstance(length, int) and length > 1 else None
