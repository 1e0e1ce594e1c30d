"""The `views` target kind: V augmented views per row, each with its params and its target.

`generate --views V --augment SPEC` (transferset/views/) runs the teachers on every
view of every row and stores, per row:

    view_params          fixed_size_list<fixed_size_list<int16>[P]>[V]  each view's augmentation
                                                     params (transferset/views/augment.py), exact
  dense (--targets dense, the default; small C):
    logits               [V][C] f16|f32    as the dense kind's, one row per view
  top-k (--targets topk:K; many classes):
    target_token_ids     [V][K] int16 (C <= 32767) or int32, most probable first
    target_logprobs      [V][K] f16|f32   log p(id) at T
    target_tail_logmass  [V] float32      log(1 - sum of the K), exact (sparsify.py)

Top-k is taken of each view's COMBINED distribution (the ensemble's, never a
member's). The options live in `target_options`: views, augment (canonical text),
seed, and k for top-k; all fingerprinted.

Decoded for the trainer with a views axis: `view_params` [rows, V, P] and the
usual target names ([rows, V, C] logits, or a [rows, V, K] support);
train/views.py picks one view per row and epoch, so the loss sees [B, C] / [B, K].
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from transferset.errors import UserError
from transferset.format.codecs import register
from transferset.format.codecs.dense import LOGITS, fixed_floats, leaf_values, list_sizes, nested, nested_type
from transferset.format.codecs.sparse import IDS, LOGPROBS, TAIL

PARAMS = "view_params"
_FLOATS = {"float16": pa.float16(), "float32": pa.float32()}
INT16_IDS = 32767


def _stacked(table: pa.Table, name: str, dims: tuple[int, ...], where: str) -> np.ndarray:
    column = table.column(name)
    if column.null_count:
        raise UserError(f"{where}: {column.null_count} rows have null {name}; the transfer set is damaged, regenerate it")
    chunks = [leaf_values(chunk) for chunk in column.chunks]
    return (chunks[0] if len(chunks) == 1 else np.concatenate(chunks)).reshape(-1, *dims)


class ViewsCodec:
    kind = "views"
    losses = ("kd", "mse")

    # -- options ------------------------------------------------------------

    def parse_options(self, text: str | None) -> dict:
        raise UserError("views are made with --views V --augment SPEC (and --targets dense or topk:K for each view's target), "
                        "not --targets views")

    def check_options(self, options: dict, num_classes: int) -> None:
        from transferset.views.augment import parse_augment

        views = options.get("views")
        if not isinstance(views, int) or isinstance(views, bool) or not 1 <= views <= 4096:
            raise UserError(f"--views {views!r} is out of range; give 1..4096 views per row")
        parse_augment(options.get("augment", ""))
        if not isinstance(options.get("seed", 0), int):
            raise UserError(f"--augment-seed must be an integer, got {options.get('seed')!r}")
        k = options.get("k")
        if k is not None and (not isinstance(k, int) or isinstance(k, bool) or not 0 < k < num_classes):
            raise UserError(f"--targets topk:{k} with --views keeps 1..{num_classes - 1} of the teachers' {num_classes} classes "
                            f"per view; use a smaller K, or --targets dense")

    @staticmethod
    def _recorded(provenance) -> dict:
        """The set's views options, refused in one line when a damaged manifest lost them."""
        from transferset.views.augment import parse_augment

        options = provenance.target_options
        views, augment, k = options.get("views"), options.get("augment"), options.get("k")
        try:
            if not (isinstance(views, int) and views >= 1 and (k is None or (isinstance(k, int) and k >= 1))):
                raise UserError("")
            count = parse_augment(augment if isinstance(augment, str) else "").count
        except UserError:
            raise UserError(f"the views set's target_options {options!r} are not a views set's (views, augment, k); "
                            f"the transfer set is damaged, regenerate it") from None
        return {"views": views, "k": k, "count": count}

    def views(self, provenance) -> int:
        return self._recorded(provenance)["views"]

    def k(self, provenance) -> int | None:
        return self._recorded(provenance)["k"]

    def param_count(self, provenance) -> int:
        return self._recorded(provenance)["count"]

    def _id_type(self, provenance) -> pa.DataType:
        return pa.int16() if provenance.num_classes <= INT16_IDS else pa.int32()

    # -- schema -------------------------------------------------------------

    def arrow_fields(self, provenance) -> list[pa.Field]:
        v, value, k = self.views(provenance), _FLOATS[provenance.storage_dtype], self.k(provenance)
        fields = [pa.field(PARAMS, nested_type(pa.int16(), (v, self.param_count(provenance))), nullable=False)]
        if k is None:
            return fields + [pa.field(LOGITS, nested_type(value, (v, provenance.num_classes)), nullable=False)]
        return fields + [pa.field(IDS, nested_type(self._id_type(provenance), (v, k)), nullable=False),
                         pa.field(LOGPROBS, nested_type(value, (v, k)), nullable=False),
                         pa.field(TAIL, nested_type(pa.float32(), (v,)), nullable=False)]

    def float_leaves(self, provenance) -> list[str]:
        return [(LOGITS if self.k(provenance) is None else LOGPROBS) + ".list.element.list.element"]

    def leaf_encodings(self, provenance) -> dict[str, str]:
        """Ids and params DELTA_BINARY_PACKED (a Parquet 2.0 encoding every reader here reads), the tail
        BYTE_STREAM_SPLIT (float32): top-10 of 1,000 classes with crop+flip params went from 43.5 to
        39.6 B/view on disk (benchmarks/bench_views.py; ids 17.4 -> 14.3 B, params 6.4 -> 5.9, tail 3.5 -> 3.3)."""
        nested_ints = ".list.element.list.element"
        encodings = {PARAMS + nested_ints: "DELTA_BINARY_PACKED"}
        if self.k(provenance) is not None:
            encodings |= {IDS + nested_ints: "DELTA_BINARY_PACKED", TAIL + ".list.element": "BYTE_STREAM_SPLIT"}
        return encodings

    def check_schema(self, schema: pa.Schema, provenance, where: str) -> None:
        for expected in self.arrow_fields(provenance):
            found = schema.field(expected.name) if expected.name in schema.names else None
            if found is None or list_sizes(found.type) != list_sizes(expected.type):
                raise UserError(f"{where}: column {expected.name!r} is missing or not of shape {list_sizes(expected.type)} per row; "
                                f"the transfer set is damaged, regenerate it")

    def bytes_per_row(self, provenance) -> float:
        v, width, k = self.views(provenance), (2 if provenance.storage_dtype == "float16" else 4), self.k(provenance)
        params = 2 * self.param_count(provenance)
        if k is None:
            return v * (params + width * provenance.num_classes)
        id_width = 2 if provenance.num_classes <= INT16_IDS else 4
        return v * (params + k * (id_width + width) + 4)

    def temperature_exact(self, provenance) -> bool:
        return self.k(provenance) is None and provenance.combine == "geometric"

    # -- encode / decode ----------------------------------------------------

    def encode(self, targets, members, provenance, positions=None, params=None) -> dict[str, pa.Array]:
        """targets [B, V, C] float32 combined logits; params int [B, V, P]."""
        import torch

        from transferset.sparsify import topk_with_tail

        if params is None:
            raise UserError("views targets need each view's params; make them with generate --views V --augment SPEC")
        columns = {PARAMS: nested(pa.array(np.asarray(params, np.int16).reshape(-1), pa.int16()), np.shape(params)[1:])}
        k = self.k(provenance)
        if k is None:
            shifted = targets - targets.amax(dim=-1, keepdim=True)  # max 0 per view, as the dense kind stores it
            return {**columns, LOGITS: fixed_floats(shifted.cpu().numpy(), provenance.storage_dtype)}
        ids, logprobs, tail = topk_with_tail(targets, provenance.temperature, k)  # of each view's combined distribution
        id_type = self._id_type(provenance)
        ids = ids.to(torch.int16 if id_type == pa.int16() else torch.int32).cpu().numpy()
        return {**columns, IDS: nested(pa.array(ids.reshape(-1), id_type), ids.shape[1:]),
                LOGPROBS: fixed_floats(logprobs.cpu().numpy(), provenance.storage_dtype),
                TAIL: nested(pa.array(tail.cpu().numpy().reshape(-1), pa.float32()), tail.shape[1:])}

    def decode_columns(self, provenance) -> list[str]:
        return [PARAMS] + ([LOGITS] if self.k(provenance) is None else [IDS, LOGPROBS, TAIL])

    def decoded_bytes_per_row(self, provenance) -> float:
        v, k = self.views(provenance), self.k(provenance)
        per_view = 8 * self.param_count(provenance) + (4 * provenance.num_classes if k is None else k * 16 + 4)
        return v * per_view

    def decode(self, table: pa.Table, provenance, where: str) -> dict[str, np.ndarray]:
        v, k = self.views(provenance), self.k(provenance)
        decoded = {"view_params": _stacked(table, PARAMS, (v, self.param_count(provenance)), where).astype(np.int64)}
        if k is None:
            logits = _stacked(table, LOGITS, (v, provenance.num_classes), where)
            if np.isnan(logits).any() or np.isposinf(logits).any():
                raise UserError(f"{where}: target logits contain NaN or +inf; the transfer set is damaged, regenerate it")
            return {**decoded, "target_logits": logits}
        ids = _stacked(table, IDS, (v, k), where).astype(np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= provenance.num_classes):
            raise UserError(f"{where}: {IDS} holds ids outside [0, {provenance.num_classes}); the transfer set is damaged, regenerate it")
        logprobs = _stacked(table, LOGPROBS, (v, k), where).astype(np.float32)
        tail = _stacked(table, TAIL, (v,), where).astype(np.float32)
        if np.isnan(logprobs).any() or (logprobs > 1e-3).any() or np.isnan(tail).any() or (tail > 1e-3).any():
            raise UserError(f"{where}: top-k log-probabilities are NaN or above 0; the transfer set is damaged, regenerate it")
        return {**decoded, "support_ids": ids, "support_weights": np.exp(logprobs), "support_logprobs": logprobs, "tail_logmass": tail}

    # -- inspect and the card -----------------------------------------------

    def statistics(self, provenance) -> dict:
        """Per row, of view 0: the top class and the entropy (top-k: of the K and the tail bucket)."""
        import polars as pl

        if self.k(provenance) is None:
            z = pl.col(LOGITS).arr.first().cast(pl.List(pl.Float32)).list.eval(pl.element() / provenance.temperature)
            sum_exp = z.list.eval(pl.element().exp()).list.sum()
            entropy = sum_exp.log() - z.list.eval(pl.element().exp() * pl.element()).list.sum() / sum_exp
            return {"top1": pl.col(LOGITS).arr.first().arr.arg_max(), "entropy": entropy}
        lp = pl.col(LOGPROBS).arr.first().cast(pl.List(pl.Float32))
        tail = pl.col(TAIL).arr.first()
        tail_entropy = pl.when(tail.is_finite()).then(-tail.exp() * tail).otherwise(0.0)
        entropy = -lp.list.eval(pl.element().exp() * pl.element()).list.sum() + tail_entropy
        return {"top1": pl.col(IDS).arr.first().arr.get(0).cast(pl.Int64), "entropy": entropy, "tail_mass": tail.exp()}

    def describe(self, provenance) -> str:
        v, k, opts = self.views(provenance), self.k(provenance), provenance.target_options
        target = (f"`{LOGITS}`: [{v}][{provenance.num_classes}] {provenance.storage_dtype}, each view's combined logits "
                  f"(softmax(logits / T) is that view's teacher distribution)" if k is None else
                  f"`{IDS}` / `{LOGPROBS}`: [{v}][{k}] the {k} most probable classes of each view's combined distribution "
                  f"and their log-probabilities at T; `{TAIL}`: [{v}] the exact log of every other class's probability")
        return "\n".join([
            f"- `{PARAMS}`: [{v}][{self.param_count(provenance)}] int16, the params of each of the {v} augmented views "
            f"of `{opts['augment']}` (seed {opts.get('seed', 0)}); `transferset.views.augment` replays a view exactly.",
            f"- {target}."])

    def recipe(self, provenance) -> list[str]:
        if self.k(provenance) is None:
            return [f'logits = column("{LOGITS}", np.float32)[:, 0]  # view 0 of each row: [rows, C]',
                    "targets = torch.softmax(logits / T, dim=-1)  # the teacher distribution of view 0 at T"]
        c, k = provenance.num_classes, self.k(provenance)
        return [f'ids, logp, tail = column("{IDS}", np.int64)[:, 0], column("{LOGPROBS}", np.float32)[:, 0], column("{TAIL}", np.float32)[:, 0]',
                f"targets = torch.zeros(len(table), {c}).scatter_(1, ids, logp.exp())  # view 0 of each row",
                f"targets += (tail.exp() / ({c} - {k})).unsqueeze(1) * (targets == 0)  # spread the tail (an approximation)"]


register(ViewsCodec())
