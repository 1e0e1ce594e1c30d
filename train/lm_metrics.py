"""Evaluation metrics of a causal-LM student on token rows, at T = 1.

Over the target positions t (target_mask 1, never the last position), with the
next-token label y_t = input_ids[t + 1]:

    positions        how many target positions were scored
    nll              mean -log softmax(logits_t)[y_t], nats per token (float32 log_softmax, float64 sums)
    perplexity       exp(nll)
    token_accuracy   fraction of positions where argmax(logits_t) == y_t
    agreement        (per-token transfer sets only) fraction of positions where argmax(logits_t)
                     equals the teachers' top-1 (support_ids[..., 0], or argmax of target_logits)

`labelled` is 0: token rows carry no class labels, so the class metrics (accuracy,
ece, the chance-level check in train/health.py) do not apply.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from train.lm_losses import next_tokens, target_positions


class TokenEvalAccumulator:
    """Sums over batches of token rows; `result()` turns them into the metrics dict."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.rows = 0
        self.positions = torch.zeros((), dtype=torch.int64, device=device)
        self.nll_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)
        self.agree = torch.zeros((), dtype=torch.int64, device=device)
        self.teacher_positions = torch.zeros((), dtype=torch.int64, device=device)

    def update(self, logits: torch.Tensor, tokens: torch.Tensor, teacher_top1: torch.Tensor | None = None) -> None:
        """logits [B, L, V], tokens int64 [B, 3, L] (Batch.inputs), teacher_top1 int64 [B, L] or None."""
        self.rows += logits.shape[0]
        mask = target_positions(tokens)  # [B, L]
        scored = logits[mask].float()  # [N, V]
        labels = next_tokens(tokens)[mask]  # [N]
        log_q = torch.log_softmax(scored, dim=-1)
        predicted = scored.argmax(dim=-1)
        self.positions += labels.numel()
        self.nll_sum -= log_q.gather(1, labels[:, None]).double().sum()
        self.correct += (predicted == labels).sum()
        if teacher_top1 is not None:
            self.agree += (predicted == teacher_top1[mask]).sum()
            self.teacher_positions += labels.numel()

    def result(self) -> dict[str, Any]:
        positions = int(self.positions)
        out: dict[str, Any] = {"rows": self.rows, "labelled": 0, "positions": positions}
        if positions:
            nll = float(self.nll_sum) / positions
            out.update(nll=nll, perplexity=math.exp(min(nll, 700.0)), token_accuracy=int(self.correct) / positions)
        if int(self.teacher_positions):
            out["agreement"] = int(self.agree) / int(self.teacher_positions)
        return out
