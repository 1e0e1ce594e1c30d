"""The dense target kind: every class's combined logit, per row.

Columns:

    logits          fixed_size_list<f16|f32>[C], not null
                    softmax(logits / T) IS the combined teacher distribution at
                    the stored temperature T (rows are shifted so max == 0)
    teacher_logits  fixed_size_list<fixed_size_list<f16|f32>[C]>[K], optional
                    every member's raw logits (--keep-teacher-logits), so that a
                    later step can recombine without running any teacher

Non-nullable on purpose: `FixedSizeListArray.flatten()` silently drops null rows,
so a null would shift every later row (measured on these machines).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from transferset.errors import UserError
from transferset.format.codecs import register

LOGITS = "logits"
TEACHER_LOGITS = "teacher_logits"
FLOAT16_MAX = 65504.0
_ARROW_TYPES = {"float16": pa.float16(), "float32": pa.float32()}


def fixed_floats(values: np.ndarray, storage_dtype: str) -> pa.FixedSizeListArray:
    """[N, C] float32 -> FixedSizeList<storage>[C]. float16 clamps to its finite range
    (targets are shifted to max 0, so only probabilities below exp(-65504/T) clip)."""
    if storage_dtype == "float16":
        values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    flat = pa.array(values.reshape(-1), type=_ARROW_TYPES[storage_dtype])
    return pa.FixedSizeListArray.from_arrays(flat, values.shape[-1])


def storage_numpy_dtype(storage_dtype: str):
    return {"float16": np.float16, "float32": np.float32}[storage_dtype]


class DenseCodec:
    kind = "dense"
    losses = ("kd", "mse")

    def arrow_fields(self, provenance) -> list[pa.Field]:
        value = pa.field("element", _ARROW_TYPES[provenance.storage_dtype], nullable=False)
        row = pa.list_(value, provenance.num_classes)
        fields = [pa.field(LOGITS, row, nullable=False)]
        if provenance.teacher_logits_kept:
            members = pa.list_(pa.field("element", row, nullable=False), len(provenance.teachers))
            fields.append(pa.field(TEACHER_LOGITS, members, nullable=False))
        return fields

    def float_leaves(self, provenance) -> list[str]:
        leaves = [f"{LOGITS}.list.element"]
        if provenance.teacher_logits_kept:
            leaves.append(f"{TEACHER_LOGITS}.list.element.list.element")
        return leaves

    def encode(self, targets, members, provenance) -> dict[str, pa.Array]:
        columns = {LOGITS: fixed_floats(targets.cpu().numpy(), provenance.storage_dtype)}
        if provenance.teacher_logits_kept:
            k, n = members.shape[0], members.shape[1]
            per_row = members.permute(1, 0, 2).contiguous().cpu().numpy()  # (B, K, C)
            inner = fixed_floats(per_row.reshape(n * k, -1), provenance.storage_dtype)
            columns[TEACHER_LOGITS] = pa.FixedSizeListArray.from_arrays(inner, k)
        return columns

    def decode_columns(self, provenance) -> list[str]:
        return [LOGITS]  # never the members' logits: the trainer does not need them

    def decoded_bytes_per_row(self, provenance) -> float:
        return 4 * provenance.num_classes  # float32

    def decode(self, table: pa.Table, provenance, where: str) -> dict[str, np.ndarray]:
        """{"target_logits": [rows, C]} in the stored dtype, zero-copy where the column is one chunk."""
        column = table.column(LOGITS)
        if column.null_count:
            raise UserError(f"{where}: {column.null_count} rows have null target logits; the transfer set is damaged, regenerate it")
        # flatten(), not .values: .values ignores slice offsets (measured on these machines).
        chunks = [chunk.flatten().to_numpy(zero_copy_only=False) for chunk in column.chunks]
        values = (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)).reshape(-1, provenance.num_classes)
        if np.isnan(values).any() or np.isposinf(values).any():
            raise UserError(f"{where}: target logits contain NaN or +inf; the transfer set is damaged, regenerate it")
        return {"target_logits": values}

    def check_schema(self, schema: pa.Schema, provenance, where: str) -> None:
        logits = schema.field(LOGITS) if LOGITS in schema.names else None
        if logits is None or not pa.types.is_fixed_size_list(logits.type) or logits.type.list_size != provenance.num_classes:
            raise UserError(f"{where}: column {LOGITS!r} is missing or not {provenance.num_classes} values per row; the transfer set is damaged, regenerate it")

    def bytes_per_row(self, provenance) -> float:
        width = 2 if provenance.storage_dtype == "float16" else 4
        members = len(provenance.teachers) if provenance.teacher_logits_kept else 0
        return width * provenance.num_classes * (1 + members)


register(DenseCodec())
