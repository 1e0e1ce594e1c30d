"""Target kinds as codecs: how one kind of soft target is stored and read back.

A codec is the only code that knows a kind's columns. Generate hands it the
combined targets of a batch and stores what it returns; the trainer hands it the
target columns of a row group and gets tensors back; `inspect` asks it for bytes
per row; the loss registry checks a loss against the names it supports. Adding a
kind (top-k, sampled, views, per-token) is one new module here plus one
`register(...)` line: nothing in generate, the writer, the stream or inspect
branches on the kind.

Readers refuse a kind they do not know (`get_codec`), naming the kinds they read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pyarrow as pa

from transferset.errors import UserError
from transferset.registry import Registry

if TYPE_CHECKING:
    import torch

    from transferset.format.provenance import Provenance


class TargetCodec(Protocol):
    kind: str
    losses: tuple[str, ...]  # loss names (train/losses.py registry) this kind can feed

    def arrow_fields(self, provenance: "Provenance") -> list[pa.Field]:
        """The target columns every shard of such a set has, in order."""

    def float_leaves(self, provenance: "Provenance") -> list[str]:
        """Parquet leaf paths of float columns (written with BYTE_STREAM_SPLIT, no statistics)."""

    def encode(self, targets: "torch.Tensor", members: "torch.Tensor | None", provenance: "Provenance",
               positions: "torch.Tensor | None" = None) -> dict[str, pa.Array]:
        """Columns for one batch: combined target logits [B, C] float32, member logits [K, B, C] or None.
        Per token (`sequence_length(provenance)` is L): targets [B, L, V] and `positions`, bool
        [B, L], the positions that get targets (the others are stored as zeros)."""

    def decode_columns(self, provenance: "Provenance") -> list[str]:
        """The columns `decode` reads (a trainer reads nothing else of the targets)."""

    def decode(self, table: pa.Table, provenance: "Provenance", where: str) -> dict[str, np.ndarray]:
        """Trainer arrays for a row group's `decode_columns`: name -> array [rows, ...]
        (floats in any precision: the stream converts them to float32 once)."""

    def decoded_bytes_per_row(self, provenance: "Provenance") -> float:
        """Bytes per row of the decoded targets as the trainer holds them (window sizing)."""

    def check_schema(self, schema: pa.Schema, provenance: "Provenance", where: str) -> None:
        """Refuse a shard whose target columns do not match the provenance."""

    def bytes_per_row(self, provenance: "Provenance") -> float:
        """Uncompressed bytes of the target columns per row."""

    def temperature_exact(self, provenance: "Provenance") -> bool:
        """Whether a student may train at a T other than the stored one, exactly."""

    def parse_options(self, text: str | None) -> dict:
        """The options of `--targets KIND:TEXT` (TEXT None when no colon), refused in one line."""

    def check_options(self, options: dict, num_classes: int) -> None:
        """Refuse options that do not fit the teachers' classes (checked after the probe)."""

    def statistics(self, provenance: "Provenance") -> dict:
        """polars expressions per row for `inspect`: "top1" (the ensemble's most probable
        class), "entropy" (nats), and any kind-specific extras (averaged over rows)."""

    def describe(self, provenance: "Provenance") -> str:
        """Markdown for the set's dataset card: what each target column holds and how
        it becomes the teacher distribution (format/card.py adds the rest)."""

    def recipe(self, provenance: "Provenance") -> list[str]:
        """Plain-Python lines for the card's PyTorch example: from a pyarrow `table`
        (and `np`, `torch`, `T` in scope) set `targets`, float32 [rows, C], the
        teacher distribution at the stored temperature T. Run by a test."""


_CODECS: Registry[TargetCodec] = Registry(lambda codec: codec.kind, lambda kind, known: f"target kind {kind!r} is unknown")
register = _CODECS.register
unregister = _CODECS.unregister  # for tests that register their own
kinds = _CODECS.names


def get_codec(kind: Any, where: str = "transfer set") -> TargetCodec:
    from transferset.format.provenance import RESERVED_TARGET_KINDS

    if not isinstance(kind, str) or kind not in _CODECS:  # a damaged file may hold any JSON value
        known = "reserved for a newer transferset" if isinstance(kind, str) and kind in RESERVED_TARGET_KINDS else "unknown"
        raise UserError(f"{where}: target kind {kind!r} is {known}; this version reads {', '.join(kinds())}")
    return _CODECS.get(kind)


def sequence_length(provenance: "Provenance") -> int | None:
    """L for a per-token set (language-model teachers on token inputs: one target per
    position, recorded by generate as `target_options["positions"]`), None for row targets
    (a sequence classifier's class targets over token inputs included)."""
    positions = provenance.target_options.get("positions")
    return positions if isinstance(positions, int) and not isinstance(positions, bool) and positions > 0 else None


def refuse_per_token(provenance: "Provenance", where: str, what: str) -> None:
    """One line for a reader that does not read per-token sets yet (`what`: what it does instead)."""
    if sequence_length(provenance) is not None:
        raise UserError(f"{where} holds per-token targets (a language-model transfer set, {sequence_length(provenance)} "
                        f"positions per row); {what}")


def parse_targets(text: str) -> tuple[str, dict]:
    """`--targets KIND[:OPTIONS]` -> (kind, the codec's options)."""
    kind, _, options = text.partition(":")
    return kind, get_codec(kind, "--targets").parse_options(options or None)


from transferset.format.codecs import dense, sparse, views  # noqa: E402  (they register themselves)

__all__ = ["TargetCodec", "register", "unregister", "get_codec", "kinds", "parse_targets", "sequence_length", "refuse_per_token", "dense", "sparse", "views"]
