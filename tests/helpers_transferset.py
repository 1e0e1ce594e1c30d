"""Tiny transfer sets and labelled Parquet files for reader tests.

Tests build them here with the same format layer (`transferset.format`: schema,
provenance, dense codec, manifest) the generator uses. Every row is recognisable: row r has id "r<r>", inputs [r, r + 0.5, ...]
and logits drawn from a seeded generator, so a test can check that a batch holds
exactly the rows it names.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transferset.format import schema
from transferset.format.codecs.dense import storage_numpy_dtype
from transferset.format.manifest import ShardRecord, shard_name, write_manifest
from transferset.format.provenance import Provenance
from transferset.inputs import InputSpec
from transferset.io import file_sha256


@dataclass
class Rows:
    """What a fixture wrote, indexed by global row number (the number in the id)."""

    ids: list[str]
    inputs: np.ndarray  # float32 [N, F], what the InputSpec turns the stored column into
    labels: np.ndarray  # int64 [N], -1 = unlabelled
    logits: np.ndarray  # [N, C] in the storage dtype

    def row(self, ident: str) -> int:
        return int(ident[1:])


def input_values(n: int, features: int, start: int = 0) -> np.ndarray:
    r = np.arange(start, start + n, dtype=np.float32)[:, None]
    return r + 0.5 * np.arange(features, dtype=np.float32)[None, :]  # [n, F]: row r -> r, r + 0.5, ...


def provenance(num_classes: int, spec: InputSpec, storage_dtype: str = "float16", temperature: float = 2.0) -> Provenance:
    return Provenance(target_kind="dense", num_classes=num_classes, temperature=temperature, combine="arithmetic",
                      storage_dtype=storage_dtype, teachers=[{"name": "fixture-teacher"}], sources=[{"path": "fixture"}],
                      input=spec.to_dict())


def make_transfer_set(
    directory: Path,
    shards: list[list[int]],
    *,
    num_classes: int = 3,
    features: int = 2,
    storage_dtype: str = "float16",
    unlabelled_every: int = 5,
    seed: int = 0,
    compression: str = "none",
) -> Rows:
    """Write a transfer set whose shard i has row groups of sizes shards[i].

    Rows are numbered across shards in order; every `unlabelled_every`-th row
    (r % unlabelled_every == 1) has a null label."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = InputSpec(columns=("x",), shape=(features,))
    input_field = pa.field("x", pa.list_(pa.field("element", pa.float32(), nullable=False), features), nullable=False)
    prov = provenance(num_classes, spec, storage_dtype)
    target = schema.target_schema(prov, [input_field])
    total = sum(sum(s) for s in shards)
    rng = np.random.default_rng(seed)
    dtype = storage_numpy_dtype(storage_dtype)
    logits = (rng.standard_normal((total, num_classes)) * 3).astype(dtype)
    labels = rng.integers(0, num_classes, total).astype(np.int64)
    if unlabelled_every:
        labels[np.arange(total) % unlabelled_every == 1] = -1
    inputs = input_values(total, features)
    records, row = [], 0
    for index, sizes in enumerate(shards):
        path = directory / shard_name(index)
        with pq.ParquetWriter(path, target, compression=compression) as writer:
            for size in sizes:
                rows = slice(row, row + size)
                writer.write_table(_table(target, row, inputs[rows], labels[rows], logits[rows]), row_group_size=max(size, 1))
                row += size
        labelled = int((labels[row - sum(sizes) : row] >= 0).sum())
        records.append(ShardRecord(path.name, index, sum(sizes), labelled, path.stat().st_size, file_sha256(path)))
    write_manifest(directory, prov, records)
    return Rows([f"r{i}" for i in range(total)], inputs, labels, logits)


def _table(target: pa.Schema, first: int, inputs, labels, logits) -> pa.Table:
    n = len(labels)
    c = logits.shape[1]
    return pa.table(
        {
            schema.ID: pa.array([f"r{i}" for i in range(first, first + n)]),
            schema.SOURCE: pa.array(["fixture"] * n),
            schema.LABEL: pa.array(labels, mask=labels < 0, type=pa.int32()),
            schema.LOGITS: pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), c),
            "x": pa.FixedSizeListArray.from_arrays(pa.array(inputs.reshape(-1)), inputs.shape[1]),
        },
        schema=target,
    )


def write_labelled(path: Path, first: int, n: int, *, features: int = 2, label_type=pa.int64(), labels=None,
                   row_group_size: int = 10, write_statistics: bool = True, num_classes: int = 4) -> np.ndarray:
    """A plain labelled Parquet file (id, x: list<float32>, y); returns the labels written."""
    if labels is None:
        labels = (np.arange(first, first + n) % num_classes).astype(np.int64)
    inputs = input_values(n, features, first)
    table = pa.table(
        {
            "id": pa.array([f"r{i}" for i in range(first, first + n)]),
            "x": pa.array(list(inputs), type=pa.list_(pa.float32())),  # variable lists, as users write them
            "y": pa.array(labels, type=label_type) if not isinstance(labels, pa.Array) else labels,
        }
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size, write_statistics=write_statistics)
    return np.asarray(labels)
