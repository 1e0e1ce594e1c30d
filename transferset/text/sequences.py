"""Tokenised documents -> fixed-length rows with an attention mask and a target mask.

Three ways to fit documents into rows of `max_length` tokens:

    rows       one document per row, right-padded; a longer document is refused
               (a silently cut document is a different document)
    truncate   one document per row, cut to max_length
    pack       documents joined (an eos token after each, when the tokenizer has
               one and the document does not end with it) and cut into full rows;
               only the last row is padded. Rows span document boundaries, as in
               every packed LM corpus: attention is not reset between documents.

Masks per position t of a row (int8, 1 = yes):

    attention_mask[t]   a real token, not padding
    target_mask[t]      the teacher's distribution at t is a target: t + 1 is a real
                        token of this row and a target token. Position t predicts
                        token t + 1, so the last real token of a row gets no target
                        (its next token is not in the row), and with a prompt field
                        only positions whose next token belongs to the response do.

A token belongs to the response when any of its characters lies past the prompt
(a BPE token can straddle the boundary); special tokens the tokenizer adds count
with the side they are on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from transferset.errors import UserError

MODES = ("rows", "truncate", "pack")


@dataclass
class Rows:
    """A block of finished rows, all [n, max_length] except `labels` [n] / None."""

    input_ids: np.ndarray  # int32
    attention_mask: np.ndarray  # int8
    target_mask: np.ndarray  # int8
    labels: list[int | None] | None


def target_tokens(encoding, prompt_chars: int | None) -> np.ndarray:
    """bool [n]: which tokens of one encoded document are target (response) tokens."""
    n = len(encoding.ids)
    if prompt_chars is None:
        return np.ones(n, bool)
    ends = np.array([end for _, end in encoding.offsets], np.int64)
    special = np.array(encoding.special_tokens_mask, bool)
    response = (ends > prompt_chars) & ~special
    if response.any():  # special tokens after the first response token are response (e.g. a closing eos)
        response |= special & (np.arange(n) > np.flatnonzero(response)[0])
    return response


def next_token_targets(targets: np.ndarray, length: int) -> np.ndarray:
    """int8 [length]: position t gets a target when t + 1 < length and token t + 1 is a target token."""
    mask = np.zeros(length, np.int8)
    mask[:-1] = targets[1:length]
    return mask


@dataclass
class Packer:
    """Builds rows from documents, in `mode`, `block_rows` finished rows at a time."""

    max_length: int
    mode: str
    pad_id: int
    eos_id: int | None
    where: str
    block_rows: int = 1024
    documents: int = 0
    truncated: int = 0
    tokens: int = 0
    _ids: list = field(default_factory=list)  # pack mode: tokens not yet in a row
    _targets: list = field(default_factory=list)
    _rows: list = field(default_factory=list)  # finished rows: (ids, targets, label)

    def add(self, ids: list[int], targets: np.ndarray, label: int | None, row: int) -> Iterator[Rows]:
        self.documents += 1
        if self.mode == "pack":
            if self.eos_id is not None and (not ids or ids[-1] != self.eos_id):
                ids, targets = ids + [self.eos_id], np.append(targets, True)
            self._ids.extend(ids)
            self._targets.extend(targets.tolist())
            while len(self._ids) >= self.max_length:
                self._finish(self._ids[:self.max_length], np.array(self._targets[:self.max_length], bool), None)
                del self._ids[:self.max_length], self._targets[:self.max_length]
        else:
            if len(ids) > self.max_length:
                if self.mode == "rows":
                    raise UserError(f"{self.where}: document {row} has {len(ids):,} tokens, more than --max-length "
                                    f"{self.max_length:,}; raise --max-length, or pass --truncate or --pack")
                ids, targets = ids[:self.max_length], targets[:self.max_length]
                self.truncated += 1
            self._finish(ids, targets, label)
        if len(self._rows) >= self.block_rows:
            yield self._block()

    def finish(self) -> Iterator[Rows]:
        if self._ids:
            self._finish(self._ids, np.array(self._targets, bool), None)
            self._ids, self._targets = [], []
        if self._rows:
            yield self._block()

    def _finish(self, ids: list[int], targets: np.ndarray, label: int | None) -> None:
        self.tokens += len(ids)
        self._rows.append((ids, targets, label))

    def _block(self) -> Rows:
        n, length = len(self._rows), self.max_length
        input_ids = np.full((n, length), self.pad_id, np.int32)
        attention = np.zeros((n, length), np.int8)
        target = np.zeros((n, length), np.int8)
        for i, (ids, targets, _) in enumerate(self._rows):
            input_ids[i, :len(ids)] = ids
            attention[i, :len(ids)] = 1
            target[i, :len(ids)] = next_token_targets(targets, len(ids))
        labels = [label for _, _, label in self._rows] if self.mode != "pack" else None
        self._rows = []
        return Rows(input_ids, attention, target, labels)
