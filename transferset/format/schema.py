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
    source_row      int64, not null        instead of the input columns, with
                                           `generate --inputs reference`: the row's
                                           index in its source file (references.py)

The Parquet key-value metadata of every shard holds the provenance as JSON under
the key `transferset` (provenance.py).
"""

from __future__ import annotations

import pyarrow as pa

from transferset.errors import UserError
from transferset.format.codecs import get_codec
from transferset.format.codecs.dense import LOGITS, TEACHER_LOGITS  # noqa: F401 (the dense columns, named for readers)
from transferset.format.provenance import Provenance
from transferset.format.references import SOURCE_ROW, by_reference

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
    targets and for most passed-through inputs (`input_encodings`); a CRC32 in every
    page header, checked by every reader in this package."""
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
        "column_encoding": {**{leaf: "BYTE_STREAM_SPLIT" if provenance.storage_dtype == "float32" else "PLAIN"
                               for leaf in float_leaves}, **input_encodings(schema, provenance), **own,
                            # consecutive row numbers: a few bytes per page
                            **({SOURCE_ROW: "DELTA_BINARY_PACKED"} if by_reference(provenance) else {})},
        "write_statistics": [n for n in schema.names if n not in float_columns],
        # A flipped bit inside a page is then an error on read (page_checksum_verification),
        # not a silently different logit: even under `train --no-verify`.
        "write_page_checksum": True,
    }


# Input leaves written with BYTE_STREAM_SPLIT (measured by benchmarks/bench_input_encoding.py):
# Parquet stores 8-bit integers as INT32, so uint8 pixels become 4 bytes each of which
# 3 are zero; split into byte streams, zstd drops those for free. MNIST pixels: 164 B/row
# instead of 245, written ~25% and read ~30% faster; token ids (int32) -15 to -20%;
# float32/float64 features -5 to -10%. 16-bit integers came out larger (not split); so do
# a token source's 0/1 masks (long runs that PLAIN + zstd already removes).
_SPLIT_TYPES = (pa.int8(), pa.uint8(), pa.int32(), pa.uint32(), pa.int64(), pa.uint64(), pa.float32(), pa.float64())


def input_encodings(schema: pa.Schema, provenance: Provenance) -> dict[str, str]:
    """{Parquet leaf path: encoding} of the passed-through input columns that are split."""
    codec_columns = {f.name for f in get_codec(provenance.target_kind).arrow_fields(provenance)}
    tokens = bool((provenance.input or {}).get("tokens"))
    encodings = {}
    if by_reference(provenance):  # no input columns: source_row has its own encoding
        return encodings
    for f in schema:
        if f.name in (ID, SOURCE, LABEL) or f.name in codec_columns:
            continue
        # pyarrow names a list leaf `<column>.list.element` (the plain column name is silently ignored)
        leaf, value = (f"{f.name}.list.element", f.type.value_type) if pa.types.is_fixed_size_list(f.type) else (f.name, f.type)
        masks = tokens and pa.types.is_integer(value) and value.bit_width == 8
        if value in _SPLIT_TYPES and not masks:
            encodings[leaf] = "BYTE_STREAM_SPLIT"
    return encodings


def provenance_of(schema: pa.Schema, where: str) -> Provenance:
    """The provenance a shard's footer schema carries."""
    return Provenance.decode_bytes((schema.metadata or {}).get(METADATA_KEY), where)
