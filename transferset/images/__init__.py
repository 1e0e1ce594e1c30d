"""Image files: folders -> image sources (`convert --image-folder`), decoding, recognising one.

    folder.py    which files, which class: class sub-folders give labels, files directly inside none
    decode.py    encoded bytes -> uint8 [B, C, H, W] at a declared size, with Pillow, in threads
    convert.py   the source's schema and metadata, the check that every file decodes, publication

A source written by `convert --image-folder` says so in its metadata (`kind: images`),
so `generate` feeds it as image inputs (`InputSpec(image=True)`) decoded to --input-shape.
"""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq

from transferset.source_writer import METADATA_KEY


def image_metadata(path: str) -> dict | None:
    """The `convert --image-folder` metadata of a source file, or None for any other file."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        meta = json.loads(raw) if raw else None
    except (OSError, ValueError, pa.ArrowInvalid):
        return None  # not for us to report here: the source checks name what is wrong
    return meta if isinstance(meta, dict) and meta.get("kind") == "images" else None
