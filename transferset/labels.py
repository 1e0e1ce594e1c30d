"""Hard labels: one statistic and one range check, for every reader of labels
(generate's sources, the trainer's labelled data, convert's label arrays)."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from transferset.errors import UserError


@dataclass
class LabelStats:
    """Running (labelled rows, min, max) over label columns; nulls are unlabelled."""

    labelled: int = 0
    lo: int | None = None
    hi: int | None = None

    def update(self, column: pa.Array | pa.ChunkedArray) -> "LabelStats":
        n = len(column) - column.null_count
        if n:
            bounds = pc.min_max(column)
            lo, hi = bounds["min"].as_py(), bounds["max"].as_py()
            self.labelled += n
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)
        return self


def check_label_range(lo: int | None, hi: int | None, num_classes: int | None, message: str) -> None:
    """Refuse labels outside [0, num_classes) (only negatives when num_classes is None).
    `message` names the offending label as `{label}`."""
    if lo is not None and lo < 0:
        raise UserError(message.format(label=lo))
    if num_classes is not None and hi is not None and hi >= num_classes:
        raise UserError(message.format(label=hi))
