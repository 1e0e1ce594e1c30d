"""The transfer-set format: one Arrow schema and one provenance codec.

A transfer set is a directory of Parquet shards plus `_manifest.json` (see
`manifest.py`). Every shard has the same schema, declared here once; writers cast
every batch to it, so a shard can never drift from its siblings.

Columns (schema version 1, target kind "dense"):

    id              string, not null       stable row id (user's --id-column, or
                                           "<source fingerprint[:16]>:<row>")
    source          string, not null       the source path the row came from
    label           int32, nullable        hard label in [0, C), null = unlabelled
    logits          fixed_size_list<f16|f32>[C], not null
                    softmax(logits / T) IS the combined teacher distribution at
                    the stored temperature T (rows are shifted so max == 0)
    teacher_logits  fixed_size_list<fixed_size_list<f16|f32>[C]>[K], optional
                    every member's raw logits (--keep-teacher-logits), so that a
                    later step can recombine without running any teacher
    <input columns> passed through unchanged (fixed-size lists are kept as they
                    are; variable lists are stored as fixed-size lists)

The Parquet key-value metadata of every shard holds the full provenance as JSON
under the key `transferset`. `schema_version` and `target_kind` leave room for
sparse top-k targets over large vocabularies and per-token sequence targets:
readers must refuse what they do not know instead of guessing.
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from transferset.errors import UserError

SCHEMA_VERSION = 1
METADATA_KEY = b"transferset"
FORMAT_NAME = "transferset"

# Known target kinds. Only "dense" is written today; the names of the others are
# reserved so that a reader can say "written by a newer transferset" precisely.
TARGET_KINDS = ("dense",)
RESERVED_TARGET_KINDS = ("topk", "sequence")

ID = "id"
SOURCE = "source"
LABEL = "label"
LOGITS = "logits"
TEACHER_LOGITS = "teacher_logits"
RESERVED_COLUMNS = (ID, SOURCE, LABEL, LOGITS, TEACHER_LOGITS)

STORAGE_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}
COMBINE_METHODS = ("arithmetic", "geometric")


def target_schema(
    num_classes: int,
    storage_dtype: str,
    input_fields: list[pa.Field],
    num_teachers_kept: int = 0,
) -> pa.Schema:
    """The schema every shard of one transfer set is cast to before writing."""
    value_type = STORAGE_DTYPES[storage_dtype]
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(LABEL, pa.int32(), nullable=True),
        # Non-nullable on purpose: FixedSizeListArray.flatten() silently drops
        # null rows, so a null here would shift every later row (measured on these machines).
        pa.field(LOGITS, pa.list_(pa.field("element", value_type, nullable=False), num_classes), nullable=False),
    ]
    if num_teachers_kept:
        member = pa.list_(pa.field("element", value_type, nullable=False), num_classes)
        fields.append(
            pa.field(TEACHER_LOGITS, pa.list_(pa.field("element", member, nullable=False), num_teachers_kept), nullable=False)
        )
    for field in input_fields:
        if field.name in RESERVED_COLUMNS:
            raise UserError(
                f"input column {field.name!r} clashes with a transfer-set column; "
                f"rename it in the source (reserved names: {', '.join(RESERVED_COLUMNS)})"
            )
        fields.append(field)
    return pa.schema(fields)


def with_provenance(schema: pa.Schema, provenance: dict[str, Any]) -> pa.Schema:
    return schema.with_metadata({METADATA_KEY: encode_provenance(provenance)})


def encode_provenance(provenance: dict[str, Any]) -> bytes:
    return json.dumps(provenance, sort_keys=True, separators=(",", ":")).encode()


def decode_provenance(raw: bytes | str | None, where: str) -> dict[str, Any]:
    """Parse and validate provenance JSON; `where` names the file in errors."""
    if raw is None:
        raise UserError(f"{where} has no transferset metadata: it is not a transfer-set shard")
    try:
        provenance = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise UserError(f"{where}: transferset metadata is not valid JSON; the file is damaged, regenerate it") from None
    validate_provenance(provenance, where)
    return provenance


def validate_provenance(provenance: Any, where: str) -> None:
    """Check the fields every reader relies on, before anything uses them."""
    if not isinstance(provenance, dict) or provenance.get("format") != FORMAT_NAME:
        raise UserError(f"{where}: not transferset metadata (missing format={FORMAT_NAME!r})")
    version = provenance.get("schema_version")
    if version != SCHEMA_VERSION:
        raise UserError(
            f"{where}: transfer-set schema version {version!r} is not supported by this transferset "
            f"(it reads version {SCHEMA_VERSION}); upgrade transferset or regenerate the set"
        )
    kind = provenance.get("target_kind")
    if kind not in TARGET_KINDS:
        known = "reserved for a newer transferset" if kind in RESERVED_TARGET_KINDS else "unknown"
        raise UserError(f"{where}: target kind {kind!r} is {known}; this version reads {', '.join(TARGET_KINDS)}")
    checks = [
        ("num_classes", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 2),
        ("temperature", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
        ("combine", lambda v: v in COMBINE_METHODS),
        ("storage_dtype", lambda v: v in STORAGE_DTYPES),
        ("teachers", lambda v: isinstance(v, list) and len(v) >= 1),
        ("sources", lambda v: isinstance(v, list) and len(v) >= 1),
        ("input", lambda v: isinstance(v, dict)),
    ]
    for key, ok in checks:
        if key not in provenance or not ok(provenance[key]):
            raise UserError(f"{where}: transferset metadata field {key!r} is missing or invalid ({provenance.get(key)!r}); the file is damaged, regenerate it")


def storage_numpy_dtype(storage_dtype: str):
    import numpy as np

    return {"float16": np.float16, "float32": np.float32}[storage_dtype]
