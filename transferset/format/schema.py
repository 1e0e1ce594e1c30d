"""The Arrow schema of a transfer set's shards, declared once.

A transfer set is a directory of Parquet shards plus `_manifest.json` (see
`manifest.py`). Every shard has the same schema, built here from the provenance;
writers cast every batch to it, so a shard can never drift from its siblings.

Columns (schema version 1):

    id              string, not null       stable row id (user's --id-column, or
                                           "<source fingerprint[:16]>:<row>")
    source          string, not null       the source path the row came from
    label           int32, nullable        hard label in [0, C), null = unlabelled
    <target columns> declared by the target kind's codec (codecs/dense.py: `logits`,
                    and `teacher_logits` with --keep-teacher-logits)
    <input columns> passed through unchanged (fixed-size lists are kept as they
                    are; variable lists are stored as fixed-size lists)

The Parquet key-value metadata of every shard holds the provenance as JSON under
the key `transferset` (provenance.py).
"""

from __future__ import annotations

import pyarrow as pa

from transferset.errors import UserError
from transferset.format.codecs import get_codec
from transferset.format.codecs.dense import LOGITS, TEACHER_LOGITS  # noqa: F401 (the dense columns, named for readers)
from transferset.format.provenance import Provenance

METADATA_KEY = b"transferset"

ID = "id"
SOURCE = "source"
LABEL = "label"
RESERVED_COLUMNS = (ID, SOURCE, LABEL, LOGITS, TEACHER_LOGITS)


def target_schema(provenance: Provenance, input_fields: list[pa.Field]) -> pa.Schema:
    """The schema every shard of one transfer set is cast to, provenance included."""
    fields = [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(SOURCE, pa.string(), nullable=False),
        pa.field(LABEL, pa.int32(), nullable=True),
        *get_codec(provenance.target_kind).arrow_fields(provenance),
    ]
    for field in input_fields:
        if field.name in RESERVED_COLUMNS:
            raise UserError(
                f"input column {field.name!r} clashes with a transfer-set column; "
                f"rename it in the source (reserved names: {', '.join(RESERVED_COLUMNS)})"
            )
        fields.append(field)
    return pa.schema(fields, metadata={METADATA_KEY: provenance.encode_bytes()})


def parquet_options(schema: pa.Schema, provenance: Provenance) -> dict:
    """How shards are encoded (measured, see docs/format.md): zstd level 1; float
    target columns without dictionary and without statistics (float16 statistics cost
    ~2x the write time and nobody filters on them); BYTE_STREAM_SPLIT for float32
    only; a CRC32 in every page header, checked by every reader in this package."""
    codec = get_codec(provenance.target_kind)
    float_leaves = codec.float_leaves(provenance)
    float_columns = {leaf.split(".")[0] for leaf in float_leaves}
    # A kind may choose other leaves' encodings (views: DELTA_BINARY_PACKED ids, codecs/views.py).
    own = codec.leaf_encodings(provenance) if hasattr(codec, "leaf_encodings") else {}
    return {
        "compression": "zstd",
        "compression_level": 1,
        # Dictionary only where values repeat (source path, label); float
        # dictionaries make files bigger and slower (measured on these machines).
        "use_dictionary": [n for n in (SOURCE, LABEL) if n in schema.names],
        # float16 stays PLAIN: BYTE_STREAM_SPLIT on FLOAT16 (a 2022 addition to the
        # format) is refused by DuckDB and older readers; docs/format.md has the bytes.
        "column_encoding": {leaf: "BYTE_STREAM_SPLIT" if provenance.storage_dtype == "float32" else "PLAIN"
                            for leaf in float_leaves} | own,
        "write_statistics": [n for n in schema.names if n not in float_columns],
        # A flipped bit inside a page is then an error on read (page_checksum_verification),
        # not a silently different logit: even under `train --no-verify`.
        "write_page_checksum": True,
    }


def provenance_of(schema: pa.Schema, where: str) -> Provenance:
    """The provenance a shard's footer schema carries."""
    return Provenance.decode_bytes((schema.metadata or {}).get(METADATA_KEY), where)
