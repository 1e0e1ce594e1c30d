"""The dense target kind: every class's combined logit, per row (or per token).

Columns:

    logits          fixed_size_list<f16|f32>[C], not null
                    softmax(logits / T) IS the combined teacher distribution at
                    the stored temperature T (rows are shifted so max == 0)
                    per token (token inputs): [L][V], one distribution per position;
                    positions outside `target_mask` are stored as zeros
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


def nested(flat: pa.Array, dims: tuple[int, ...]) -> pa.FixedSizeListArray:
    """Flat leaf values -> rows of fixed-size lists, [N, *dims] (innermost list last)."""
    for size in reversed(dims):
        flat = pa.FixedSizeListArray.from_arrays(flat, size)
    return flat


def nested_type(value: pa.DataType, dims: tuple[int, ...]) -> pa.DataType:
    for size in reversed(dims):
        value = pa.list_(pa.field("element", value, nullable=False), size)
    return value


def leaf_values(chunk: pa.Array) -> np.ndarray:
    """Every leaf value of a (nested) fixed-size list array, in row order. flatten(),
    not .values: .values ignores slice offsets (measured on these machines)."""
    while pa.types.is_fixed_size_list(chunk.type):
        chunk = chunk.flatten()
    return chunk.to_numpy(zero_copy_only=False)


def fixed_floats(values: np.ndarray, storage_dtype: str) -> pa.FixedSizeListArray:
    """[N, *dims] float32 -> nested FixedSizeList<storage>. float16 clamps to its finite range
    (targets are shifted to max 0, so only probabilities below exp(-65504/T) clip)."""
    if storage_dtype == "float16":
        values = np.clip(values, -FLOAT16_MAX, FLOAT16_MAX).astype(np.float16)
    flat = pa.array(values.reshape(-1), type=_ARROW_TYPES[storage_dtype])
    return nested(flat, values.shape[1:])


def target_dims(provenance, width: int) -> tuple[int, ...]:
    """(width,) per row, (L, width) per token."""
    from transferset.format.codecs import sequence_length

    length = sequence_length(provenance)
    return (width,) if length is None else (length, width)


def only_positions(values, positions):
    """Per-token values [B, L, ...] with the positions outside `positions` [B, L] set to 0."""
    if positions is None or values.ndim < 3:
        return values
    mask = positions.to(values.device).reshape(*positions.shape, *([1] * (values.ndim - 2)))
    return values.masked_fill(~mask, 0)


def storage_numpy_dtype(storage_dtype: str):
    return {"float16": np.float16, "float32": np.float32}[storage_dtype]


def members_field(provenance) -> pa.Field:
    """`teacher_logits`: every member's raw logits, [K][C] per row (any kind may keep them)."""
    row = pa.list_(pa.field("element", _ARROW_TYPES[provenance.storage_dtype], nullable=False), provenance.num_classes)
    return pa.field(TEACHER_LOGITS, pa.list_(pa.field("element", row, nullable=False), len(provenance.teachers)), nullable=False)


def members_column(members, provenance) -> pa.FixedSizeListArray:
    """Member logits [K, B, C] -> the `teacher_logits` column of B rows."""
    k, n = members.shape[0], members.shape[1]
    per_row = members.permute(1, 0, 2).contiguous().cpu().numpy()  # (B, K, C)
    inner = fixed_floats(per_row.reshape(n * k, -1), provenance.storage_dtype)
    return pa.FixedSizeListArray.from_arrays(inner, k)


def list_sizes(kind: pa.DataType) -> list[int]:
    """The sizes of a nested fixed-size list type, outermost first."""
    sizes = []
    while pa.types.is_fixed_size_list(kind):
        sizes.append(kind.list_size)
        kind = kind.value_type
    return sizes


class DenseCodec:
    kind = "dense"
    losses = ("kd", "mse")

    def arrow_fields(self, provenance) -> list[pa.Field]:
        row = nested_type(_ARROW_TYPES[provenance.storage_dtype], target_dims(provenance, provenance.num_classes))
        fields = [pa.field(LOGITS, row, nullable=False)]
        if provenance.teacher_logits_kept:
            fields.append(members_field(provenance))
        return fields

    def temperature_exact(self, provenance) -> bool:
        """May a student train at another T? Geometric logits are valid at every T (combine.py)."""
        return provenance.combine == "geometric"

    def parse_options(self, text: str | None) -> dict:
        if text:
            raise UserError(f"--targets dense takes no options (got dense:{text})")
        return {}

    def check_options(self, options: dict, num_classes: int) -> None:
        if options:
            raise UserError(f"--targets dense takes no options, got {options}")

    def float_leaves(self, provenance) -> list[str]:
        leaves = [f"{LOGITS}" + ".list.element" * len(target_dims(provenance, 1))]
        if provenance.teacher_logits_kept:
            leaves.append(f"{TEACHER_LOGITS}.list.element.list.element")
        return leaves

    def encode(self, targets, members, provenance, positions=None) -> dict[str, pa.Array]:
        columns = {LOGITS: fixed_floats(only_positions(targets, positions).cpu().numpy(), provenance.storage_dtype)}
        if provenance.teacher_logits_kept:
            columns[TEACHER_LOGITS] = members_column(members, provenance)
        return columns

    def decode_columns(self, provenance) -> list[str]:
        return [LOGITS]  # never the members' logits: the trainer does not need them

    def decoded_bytes_per_row(self, provenance) -> float:
        return 4 * int(np.prod(target_dims(provenance, provenance.num_classes)))  # float32

    def decode(self, table: pa.Table, provenance, where: str) -> dict[str, np.ndarray]:
        """{"target_logits": [rows, C] (per token [rows, L, V])} in the stored dtype, zero-copy where the column is one chunk."""
        column = table.column(LOGITS)
        if column.null_count:
            raise UserError(f"{where}: {column.null_count} rows have null target logits; the transfer set is damaged, regenerate it")
        chunks = [leaf_values(chunk) for chunk in column.chunks]
        values = (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)).reshape(-1, *target_dims(provenance, provenance.num_classes))
        if np.isnan(values).any() or np.isposinf(values).any():
            raise UserError(f"{where}: target logits contain NaN or +inf; the transfer set is damaged, regenerate it")
        return {"target_logits": values}

    def check_schema(self, schema: pa.Schema, provenance, where: str) -> None:
        logits = schema.field(LOGITS) if LOGITS in schema.names else None
        expected = nested_type(_ARROW_TYPES[provenance.storage_dtype], target_dims(provenance, provenance.num_classes))
        if logits is None or not pa.types.is_fixed_size_list(logits.type) or list_sizes(logits.type) != list_sizes(expected):
            raise UserError(f"{where}: column {LOGITS!r} is missing or not {provenance.num_classes} values per row; the transfer set is damaged, regenerate it")

    def bytes_per_row(self, provenance) -> float:
        width = 2 if provenance.storage_dtype == "float16" else 4
        members = len(provenance.teachers) if provenance.teacher_logits_kept else 0
        return width * int(np.prod(target_dims(provenance, provenance.num_classes))) * (1 + members)


    def statistics(self, provenance) -> dict:
        """polars expressions per row: the top class and the entropy (nats) of softmax(logits / T),
        H = lse(z) - sum(softmax(z) * z), in float32 (rows are shifted to max 0: exp(z) <= 1)."""
        import polars as pl

        z = pl.col(LOGITS).cast(pl.List(pl.Float32)).list.eval(pl.element() / provenance.temperature)
        sum_exp = z.list.eval(pl.element().exp()).list.sum()
        entropy = sum_exp.log() - z.list.eval(pl.element().exp() * pl.element()).list.sum() / sum_exp
        return {"top1": pl.col(LOGITS).arr.arg_max(), "entropy": entropy}

    def describe(self, provenance) -> str:
        dtype = provenance.storage_dtype
        meaning = {
            "geometric": "the weighted sum of the members' logits: the renormalised geometric mean of their "
                         "probabilities at **any** temperature T' is `softmax(logits / T')`",
            "arithmetic": "`T * log(mean of the members' probabilities at T)`: `softmax(logits / T)` is the "
                          "arithmetic mean at the stored T only (it is baked in)",
        }.get(provenance.combine, f"combined by {provenance.combine!r} at T; `softmax(logits / T)` is the target at the stored T")
        lines = [
            f"- `{LOGITS}`: {provenance.num_classes} {dtype} values per row, {meaning}. "
            f"Each row is shifted so that its maximum is 0 (softmax does not see the shift).",
        ]
        if provenance.teacher_logits_kept:
            lines.append(f"- `{TEACHER_LOGITS}`: every member's raw logits, [{len(provenance.teachers)}][{provenance.num_classes}] "
                         f"{dtype} per row, in the order of the teachers table (`transferset recombine` reads them).")
        return "\n".join(lines)

    def recipe(self, provenance) -> list[str]:
        return [
            f'logits = column("{LOGITS}", np.float32)',
            "targets = torch.softmax(logits / T, dim=-1)  # the teacher distribution at T (per position, per token)",
        ]


register(DenseCodec())
