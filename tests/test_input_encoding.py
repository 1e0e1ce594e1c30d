"""format/schema.py input_encodings: which passed-through input columns are written with
BYTE_STREAM_SPLIT, and that the values read back unchanged with the encoding in the file."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transferset.format.provenance import Provenance
from transferset.format.schema import parquet_options, target_schema

SPLIT = "BYTE_STREAM_SPLIT"


def provenance(tokens: bool = False) -> Provenance:
    return Provenance(target_kind="dense", num_classes=3, temperature=1.0, combine="geometric", storage_dtype="float16",
                      teachers=[{}], sources=[{}], input={"columns": ["x"], **({"tokens": True} if tokens else {})})


def fixed(values: np.ndarray) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])


def test_split_where_measured_smaller():
    rng = np.random.default_rng(0)
    inputs = {
        "u8": fixed(rng.integers(0, 256, (50, 6)).astype(np.uint8)),
        "i32": fixed(rng.integers(0, 4096, (50, 6)).astype(np.int32)),
        "f64": fixed(rng.standard_normal((50, 6))),
        "u16": fixed(rng.integers(0, 65536, (50, 6)).astype(np.uint16)),  # measured larger split: PLAIN
        "f16": fixed(rng.standard_normal((50, 6)).astype(np.float16)),  # DuckDB refuses FLOAT16 split: PLAIN
        "scalar_f32": pa.array(rng.standard_normal(50).astype(np.float32)),
        "text": pa.array([str(i) for i in range(50)]),
    }
    schema = target_schema(provenance(), [pa.field(name, a.type, nullable=False) for name, a in inputs.items()])
    encodings = parquet_options(schema, provenance())["column_encoding"]
    assert {leaf for leaf, e in encodings.items() if e == SPLIT} == {"u8.list.element", "i32.list.element", "f64.list.element", "scalar_f32"}
    assert encodings["logits.list.element"] == "PLAIN"  # float16 targets, as before


def test_token_masks_stay_plain():
    ids, mask = fixed(np.ones((4, 8), np.int32)), fixed(np.ones((4, 8), np.int8))
    schema = target_schema(provenance(tokens=True), [pa.field("input_ids", ids.type, nullable=False),
                                                     pa.field("attention_mask", mask.type, nullable=False)])
    encodings = parquet_options(schema, provenance(tokens=True))["column_encoding"]
    assert encodings.get("input_ids.list.element") == SPLIT
    assert "attention_mask.list.element" not in encodings


def test_values_read_back_unchanged_and_the_file_says_split(tmp_path):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (300, 784)).astype(np.uint8)
    logits = rng.standard_normal((300, 3)).astype(np.float16)
    schema = target_schema(provenance(), [pa.field("x", pa.list_(pa.field("element", pa.uint8(), nullable=False), 784), nullable=False)])
    table = pa.table([pa.array([f"r{i}" for i in range(300)]), pa.array(["s"] * 300), pa.nulls(300, pa.int32()),
                      fixed(logits).cast(schema.field("logits").type), fixed(pixels).cast(schema.field("x").type)], schema=schema)
    path = tmp_path / "shard.parquet"
    pq.write_table(table, path, row_group_size=128, **parquet_options(schema, provenance()))
    meta = pq.ParquetFile(path).metadata
    chunks = {meta.row_group(0).column(c).path_in_schema: meta.row_group(0).column(c).encodings for c in range(meta.num_columns)}
    assert SPLIT in chunks["x.list.element"] and SPLIT not in chunks["logits.list.element"]
    back = pq.read_table(path)
    assert np.array_equal(back.column("x").combine_chunks().flatten().to_numpy().reshape(300, 784), pixels)
    assert back.equals(table)
