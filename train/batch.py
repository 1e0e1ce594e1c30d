"""`Batch`: one batch of a stream, as the training step and the metrics read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Batch:
    inputs: torch.Tensor  # float32 [B, *input_shape]; token rows: int64 [B, 3, L] (ids, attention, target mask)
    labels: torch.Tensor  # int64 [B], -1 where the row has no label
    targets: dict[str, torch.Tensor] | None  # the codec's decoded targets, [B, ...] each ([B, L, ...] per token); None for plain data
    extra: dict[str, Any] = field(default_factory=dict)  # columns_extra: tensors, or lists of str
    tokens: bool = False  # token rows (a per-token set or a token source): a causal-LM student reads them
    global_rows: int = 0  # rows of the whole global batch, all ranks together (this rank's share is len(self))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def input_ids(self) -> torch.Tensor:
        """int64 [B, L] (token rows only)."""
        return self.inputs[:, 0]

    @property
    def attention_mask(self) -> torch.Tensor:
        """int64 [B, L], 1 = a real token (token rows only)."""
        return self.inputs[:, 1]

    @property
    def target_logits(self) -> torch.Tensor | None:
        """float32 [B, C] with softmax(t / T) the teachers' distribution (dense targets), else None."""
        return None if self.targets is None else self.targets.get("target_logits")

    @property
    def teacher_top1(self) -> torch.Tensor | None:
        """int64 [B] ([B, L] per token): the teachers' most probable class (dense: the argmax;
        sparse kinds store their support most probable, or most drawn, first), else None."""
        if self.targets is None:
            return None
        if "target_logits" in self.targets:
            return self.targets["target_logits"].argmax(dim=-1)
        ids = self.targets.get("support_ids")
        return None if ids is None else ids[..., 0].long()  # per token: [B, L]

    def to(self, device, non_blocking: bool = False) -> "Batch":
        move = lambda t: t.to(device, non_blocking=non_blocking) if isinstance(t, torch.Tensor) else t  # noqa: E731
        targets = None if self.targets is None else {k: move(v) for k, v in self.targets.items()}
        return Batch(move(self.inputs), move(self.labels), targets, {k: move(v) for k, v in self.extra.items()}, self.tokens,
                     self.global_rows)

    def pin_memory(self) -> "Batch":
        """Page-locked copies, for fast non_blocking copies to CUDA (a no-op without CUDA)."""
        if not torch.cuda.is_available():
            return self
        pin = lambda t: t.pin_memory() if isinstance(t, torch.Tensor) else t  # noqa: E731
        targets = None if self.targets is None else {k: pin(v) for k, v in self.targets.items()}
        return Batch(pin(self.inputs), pin(self.labels), targets, {k: pin(v) for k, v in self.extra.items()}, self.tokens,
                     self.global_rows)
