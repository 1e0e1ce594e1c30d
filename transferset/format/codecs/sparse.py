"""Sparse target kinds: `topk:K` and `sampled:N`, of the combined distribution.

Both store, per row, a few ids of the combined distribution at the stored T
(transferset/sparsify.py computes them from the combined target logits, never
from a member) with what a loss needs to stay exact (top-k) or unbiased
(sampled). The column names follow the KD datasets people already have
(axolotl's `target_token_ids` / `target_logprobs`); for class targets an id is
a class index.

topk:K
    target_token_ids     fixed_size_list<int32>[K]     most probable first
    target_logprobs      fixed_size_list<f16|f32>[K]   log p(id) at T
    target_tail_logmass  float32                        log(1 - sum of the K), exact
                                                        (K < C: K = C is the dense kind)
sampled:N
    target_token_ids     fixed_size_list<int32>[N]     distinct ids drawn, most often first;
                                                        then the first id again, count 0
    target_counts        fixed_size_list<int16>[N]     draws of each id (sum N)
    target_logprobs      fixed_size_list<f16|f32>[N]   log p(id) at T (makes the KL's *value*
                                                        estimate unbiased, not only its gradient)

Decoded for the trainer as a support: ids [rows, S] int64, weights [rows, S]
(p(id) for top-k, count / N for samples), the teacher's log-probs [rows, S] and
the tail log-mass [rows] (-inf for samples: their weights already sum to 1).
Members' logits (`--keep-teacher-logits`) are stored as in the dense kind.
T is baked into both: a student trains at the stored T only.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from transferset.errors import UserError
from transferset.format.codecs import register
from transferset.format.codecs.dense import (TEACHER_LOGITS, fixed_floats, leaf_values, list_sizes, members_column,
                                             members_field, nested, nested_type, only_positions, target_dims)

IDS, LOGPROBS, TAIL, COUNTS = "target_token_ids", "target_logprobs", "target_tail_logmass", "target_counts"
_FLOATS = {"float16": pa.float16(), "float32": pa.float32()}
MAX_SAMPLES = 32767  # counts are int16


def _fixed_ints(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
    return nested(pa.array(values.reshape(-1), kind), values.shape[1:])


def _stacked(table: pa.Table, name: str, dims: tuple[int, ...], where: str) -> np.ndarray:
    """A column's values as [rows, *dims] (dims () for a plain column)."""
    column = table.column(name)
    if column.null_count:
        raise UserError(f"{where}: {column.null_count} rows have null {name}; the transfer set is damaged, regenerate it")
    chunks = [leaf_values(chunk) for chunk in column.chunks]
    values = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    return values.reshape(-1, *dims)




def _parse_count(kind: str, text: str | None, what: str) -> int:
    try:
        value = int(text or "")
    except ValueError:
        raise UserError(f"--targets {kind}:{text or ''} needs {what}, e.g. --targets {kind}:32") from None
    if value <= 0:
        raise UserError(f"--targets {kind}:{value}: {what} must be positive")
    return value


class _Sparse:
    """What both sparse kinds share: member logits, schema checks, the trainer's support."""

    losses = ("kd",)
    width_key = ""

    def width(self, provenance) -> int:
        return int(provenance.target_options[self.width_key])

    def dims(self, provenance) -> tuple[int, ...]:
        """(S,) per row, (L, S) per token: the shape of the id, count and log-prob columns."""
        return target_dims(provenance, self.width(provenance))

    def positions_dims(self, provenance) -> tuple[int, ...]:
        """() per row, (L,) per token: the shape of a per-position column (top-k's tail)."""
        return self.dims(provenance)[:-1]

    def positions(self, provenance) -> int:
        """Targets per row: 1, or L per token."""
        return int(np.prod(self.positions_dims(provenance) or (1,)))

    def member_fields(self, provenance) -> list[pa.Field]:
        return [members_field(provenance)] if provenance.teacher_logits_kept else []

    def temperature_exact(self, provenance) -> bool:
        return False  # the stored log-probs are of the distribution at the stored T only

    def float_leaves(self, provenance) -> list[str]:
        leaves = [LOGPROBS + ".list.element" * len(self.dims(provenance))]
        if provenance.teacher_logits_kept:
            leaves.append(f"{TEACHER_LOGITS}.list.element.list.element")
        return leaves

    def leaf_encodings(self, provenance) -> dict[str, str]:
        """Ids DELTA_BINARY_PACKED (Parquet 2.0; every reader tested here reads it): ids need
        15-18 bits, and PLAIN spends 4 bytes on each. Measured with benchmarks/bench_lm_targets.py
        (zstd-1 after it): topk:32 at V = 32k 134.8 -> 121.6 B/token, at 150k 145.0 -> 131.0;
        topk:8 at 150k 44.1 -> 40.3 (the tail BYTE_STREAM_SPLIT too, in TopkCodec)."""
        return {IDS + ".list.element" * len(self.dims(provenance)): "DELTA_BINARY_PACKED"}

    def member_columns(self, members, provenance) -> dict[str, pa.Array]:
        if not provenance.teacher_logits_kept:
            return {}
        return {TEACHER_LOGITS: members_column(members, provenance)}

    def decoded_bytes_per_row(self, provenance) -> float:
        return (self.width(provenance) * (8 + 4 + 4) + 4) * self.positions(provenance)

    def check_schema(self, schema: pa.Schema, provenance, where: str) -> None:
        expected = {f.name: list_sizes(f.type) for f in self.arrow_fields(provenance)}
        for name in self.decode_columns(provenance):
            field = schema.field(name) if name in schema.names else None
            if field is None or list_sizes(field.type) != expected[name]:
                raise UserError(f"{where}: column {name!r} is missing or not of shape {expected[name]} per row; "
                                f"the transfer set is damaged, regenerate it")

    option_keys: tuple[str, ...] = ()

    def check_options(self, options: dict, num_classes: int) -> None:
        """Every option the kind has, of its type (options may come from the API, not only
        from `--targets`, and all of them are fingerprinted)."""
        unknown = sorted(set(options) - set(self.option_keys))
        if unknown:
            raise UserError(f"--targets {self.kind} has no option {unknown[0]!r}; its options are {', '.join(self.option_keys)}")
        for key in self.option_keys:
            value = options.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or (key != "seed" and value <= 0):
                raise UserError(f"--targets {self.kind}: {key} must be a{' positive' if key != 'seed' else 'n'} integer, got {value!r}")
        width = options[self.width_key]
        if self.kind == "topk" and width >= num_classes:
            raise UserError(f"--targets topk:{width} keeps every one of the teachers' {num_classes} classes; "
                            f"use a K below {num_classes}, or --targets dense")
        if self.kind == "sampled" and width > MAX_SAMPLES:
            raise UserError(f"--targets sampled:{width}: at most {MAX_SAMPLES} draws per row")

    def check_ids(self, ids: np.ndarray, provenance, where: str) -> np.ndarray:
        """Stored ids as int64, refused when outside [0, C) (an index error in the loss otherwise)."""
        if ids.size and (ids.min() < 0 or ids.max() >= provenance.num_classes):
            raise UserError(f"{where}: {IDS} holds ids outside [0, {provenance.num_classes}); the transfer set is damaged, regenerate it")
        return ids.astype(np.int64)

    def describe_members(self, provenance) -> list[str]:
        if not provenance.teacher_logits_kept:
            return []
        return [f"- `{TEACHER_LOGITS}`: every member's raw logits, [{len(provenance.teachers)}][{provenance.num_classes}] "
                f"{provenance.storage_dtype} per row, in the order of the teachers table."]


class TopkCodec(_Sparse):
    kind = "topk"

    def leaf_encodings(self, provenance) -> dict[str, str]:
        tail = TAIL + ".list.element" * len(self.positions_dims(provenance))  # float32, always
        return {**super().leaf_encodings(provenance), tail: "BYTE_STREAM_SPLIT"}
    width_key = "k"
    option_keys = ("k",)

    def statistics(self, provenance) -> dict:
        """Per row: the top class; the entropy of the stored distribution (the top K and
        one tail bucket: a lower bound of the full entropy); the tail's probability."""
        import polars as pl

        lp = pl.col(LOGPROBS).cast(pl.List(pl.Float32))
        tail = pl.col(TAIL)
        tail_entropy = pl.when(tail.is_finite()).then(-tail.exp() * tail).otherwise(0.0)
        entropy = -lp.list.eval(pl.element().exp() * pl.element()).list.sum() + tail_entropy
        return {"top1": pl.col(IDS).arr.get(0), "entropy": entropy, "tail_mass": tail.exp()}

    def parse_options(self, text: str | None) -> dict:
        return {"k": _parse_count("topk", text, "K, the ids kept per row")}

    def arrow_fields(self, provenance) -> list[pa.Field]:
        dims, value = self.dims(provenance), _FLOATS[provenance.storage_dtype]
        return [pa.field(IDS, nested_type(pa.int32(), dims), nullable=False),
                pa.field(LOGPROBS, nested_type(value, dims), nullable=False),
                pa.field(TAIL, nested_type(pa.float32(), self.positions_dims(provenance)), nullable=False),
                *self.member_fields(provenance)]

    def encode(self, targets, members, provenance, positions=None) -> dict[str, pa.Array]:
        import torch

        from transferset.sparsify import topk_with_tail

        ids, logprobs, tail = topk_with_tail(targets, provenance.temperature, self.width(provenance))
        ids, logprobs, tail = (only_positions(v, positions) for v in (ids, logprobs, tail.unsqueeze(-1)))
        return {IDS: _fixed_ints(ids.to(torch.int32).cpu().numpy(), pa.int32()),
                LOGPROBS: fixed_floats(logprobs.cpu().numpy(), provenance.storage_dtype),
                TAIL: _fixed_ints(tail.squeeze(-1).cpu().numpy(), pa.float32()), **self.member_columns(members, provenance)}

    def decode_columns(self, provenance) -> list[str]:
        return [IDS, LOGPROBS, TAIL]

    def decode(self, table: pa.Table, provenance, where: str) -> dict[str, np.ndarray]:
        dims = self.dims(provenance)
        logprobs = _stacked(table, LOGPROBS, dims, where).astype(np.float32)
        tail = _stacked(table, TAIL, self.positions_dims(provenance), where).astype(np.float32)
        if np.isnan(logprobs).any() or (logprobs > 1e-3).any() or np.isnan(tail).any() or (tail > 1e-3).any():
            raise UserError(f"{where}: top-k log-probabilities are NaN or above 0; the transfer set is damaged, regenerate it")
        return {"support_ids": self.check_ids(_stacked(table, IDS, dims, where), provenance, where), "support_weights": np.exp(logprobs),
                "support_logprobs": logprobs, "tail_logmass": tail}

    def bytes_per_row(self, provenance) -> float:
        width = 2 if provenance.storage_dtype == "float16" else 4
        members = len(provenance.teachers) * provenance.num_classes * width if provenance.teacher_logits_kept else 0
        return (self.width(provenance) * (4 + width) + 4) * self.positions(provenance) + members

    def describe(self, provenance) -> str:
        k = self.width(provenance)
        return "\n".join([
            f"- `{IDS}`: the {k} most probable classes of the combined distribution at T (most probable first); "
            f"`{LOGPROBS}`: their log-probabilities at T ({provenance.storage_dtype}); `{TAIL}`: the exact log of the "
            f"probability of every other class together (float32; log(1 - sum) computed as a log-sum-exp).",
            *self.describe_members(provenance)])

    def recipe(self, provenance) -> list[str]:
        lines = [f'ids, logp, tail = column("{IDS}", np.int64), column("{LOGPROBS}", np.float32), column("{TAIL}", np.float32)']
        if self.positions_dims(provenance):  # per token: [rows, L, K] and the tail [rows, L]
            return lines + ["# p(ids) = logp.exp() at each position; exp(tail) is the probability of every other token"]
        c, k = provenance.num_classes, self.width(provenance)
        return lines + [
            f"targets = torch.zeros(len(table), {c}).scatter_(1, ids, logp.exp())",
            f"targets += (tail.exp() / ({c} - {k})).unsqueeze(1) * (targets == 0)  # spread the tail (an approximation)",
        ]


class SampledCodec(_Sparse):
    kind = "sampled"
    width_key = "n"
    option_keys = ("n", "seed")

    def statistics(self, provenance) -> dict:
        """Per row: the most drawn class, and sum (count / N) * -log p(id), an unbiased
        estimate of the entropy of the full distribution."""
        import polars as pl

        n = self.width(provenance)
        as_floats = pl.Array(pl.Float32, n)
        entropy = -(pl.col(COUNTS).cast(as_floats) / n * pl.col(LOGPROBS).cast(as_floats)).arr.sum()
        return {"top1": pl.col(IDS).arr.get(0), "entropy": entropy}

    def parse_options(self, text: str | None) -> dict:
        n = _parse_count("sampled", text, "N, the draws per row")
        if n > MAX_SAMPLES:
            raise UserError(f"--targets sampled:{n}: at most {MAX_SAMPLES} draws per row")
        return {"n": n, "seed": 0}

    def arrow_fields(self, provenance) -> list[pa.Field]:
        dims, value = self.dims(provenance), _FLOATS[provenance.storage_dtype]
        return [pa.field(IDS, nested_type(pa.int32(), dims), nullable=False),
                pa.field(COUNTS, nested_type(pa.int16(), dims), nullable=False),
                pa.field(LOGPROBS, nested_type(value, dims), nullable=False), *self.member_fields(provenance)]

    def encode(self, targets, members, provenance, positions=None) -> dict[str, pa.Array]:
        import torch

        from transferset.sparsify import sample_counts

        n = self.width(provenance)
        ids, counts, logprobs = sample_counts(targets, provenance.temperature, n, int(provenance.target_options.get("seed", 0)))
        ids, counts, logprobs = (only_positions(v, positions) for v in (ids, counts, logprobs))
        return {IDS: _fixed_ints(ids.to(torch.int32).cpu().numpy(), pa.int32()),
                COUNTS: _fixed_ints(counts.to(torch.int16).cpu().numpy(), pa.int16()),
                LOGPROBS: fixed_floats(logprobs.cpu().numpy(), provenance.storage_dtype), **self.member_columns(members, provenance)}

    def decode_columns(self, provenance) -> list[str]:
        return [IDS, COUNTS, LOGPROBS]

    def decode(self, table: pa.Table, provenance, where: str) -> dict[str, np.ndarray]:
        n, dims = self.width(provenance), self.dims(provenance)
        counts = _stacked(table, COUNTS, dims, where)
        sums = counts.sum(axis=-1)
        # A sum of 0 is a position without a target (per-token sets only); anything else is damage.
        empty_allowed = bool(self.positions_dims(provenance))
        if (counts < 0).any() or ((sums != n) & ((sums != 0) | (not empty_allowed))).any():
            raise UserError(f"{where}: sample counts do not add up to {n} per position; the transfer set is damaged, regenerate it")
        logprobs = _stacked(table, LOGPROBS, dims, where).astype(np.float32)
        return {"support_ids": self.check_ids(_stacked(table, IDS, dims, where), provenance, where),
                "support_weights": counts.astype(np.float32) / n,
                "support_logprobs": logprobs, "tail_logmass": np.full(counts.shape[:-1], -np.inf, np.float32)}

    def bytes_per_row(self, provenance) -> float:
        width = 2 if provenance.storage_dtype == "float16" else 4
        members = len(provenance.teachers) * provenance.num_classes * width if provenance.teacher_logits_kept else 0
        return self.width(provenance) * (4 + 2 + width) * self.positions(provenance) + members

    def describe(self, provenance) -> str:
        n = self.width(provenance)
        return "\n".join([
            f"- `{IDS}` / `{COUNTS}`: {n} classes drawn (with replacement) from the combined distribution at T, merged into "
            f"distinct ids with their counts (most drawn first; unused slots repeat the first id with count 0). "
            f"count / {n} is an unbiased estimate of each class's probability, so a KL against it has the full KL's "
            f"expected value and gradient; `{LOGPROBS}`: each id's log-probability at T.",
            *self.describe_members(provenance)])

    def recipe(self, provenance) -> list[str]:
        n = self.width(provenance)
        lines = [f'ids, counts = column("{IDS}", np.int64), column("{COUNTS}", np.float32)']
        if self.positions_dims(provenance):  # per token: [rows, L, N]
            return lines + [f"weights = counts / {n}  # an unbiased estimate of p(ids) at each target position"]
        return lines + [f"targets = torch.zeros(len(table), {provenance.num_classes}).scatter_add_(1, ids, counts / {n})  # unbiased"]


register(TopkCodec())
register(SampledCodec())
