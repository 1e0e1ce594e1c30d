"""Training from a views set: per row and epoch, one stored view, replayed exactly.

A views set (transferset/format/codecs/views.py) stores V views per row, each with
its augmentation params and its target. The trainer, per row and epoch:

1. picks a view: `choose_views(seed, epoch, rows, V)`, a pure function. Epochs are
   taken in cycles of V: in cycle c = epoch // V a row's views are a permutation
   (seeded by (seed, row, c)) and epoch e uses its entry e % V, so every V epochs a
   row trains on each of its views exactly once (ImageNet+ and FKD sample one stored
   view per epoch; without repeats the V views are all used);
2. replays that view's augmentation on the row's decoded input with the stored params
   (`Augmentation.apply`: the same float32 tensor the teachers saw, bit for bit);
3. hands the loss that view's target under the usual names ([B, C] logits or a
   [B, K] support), so the losses do not know about views.

Rows are named by their position in the set (row groups in manifest order), which
does not depend on the epoch order, the window or the rank, so a resumed run, a
DataLoader worker or another rank picks the same view for the same row and epoch.
"""

from __future__ import annotations

import numpy as np
import torch

from transferset.inputs import InputSpec
from transferset.views.augment import parse_augment
from transferset.views.draws import hash64

PARAMS = "view_params"


def choose_views(seed: int, epoch: int, rows: np.ndarray, views: int) -> np.ndarray:
    """int64 [n]: the view each row (its position in the set) trains on in `epoch`."""
    cycle, turn = divmod(epoch, views)
    keys = hash64(seed & ((1 << 64) - 1), np.asarray(rows, np.int64)[:, None], cycle, np.arange(views, dtype=np.int64)[None, :])
    return np.argsort(keys, axis=1, kind="stable")[:, turn].astype(np.int64)


class ViewReplay:
    """The views of one set: which view a row takes, and its replay."""

    def __init__(self, provenance) -> None:
        options = provenance.target_options
        self.views = int(options["views"])
        # colour ops undo the input spec's mean and std, as generate's ViewPlan did
        self.augmentation = parse_augment(options["augment"]).for_input(InputSpec.from_dict(provenance.input))

    def pick(self, rows, positions: torch.Tensor, seed: int, epoch: int):
        """`rows` (window.Rows, targets with a views axis) -> the same rows with one view each."""
        chosen = torch.from_numpy(choose_views(seed, epoch, positions.numpy(), self.views))
        every = torch.arange(len(chosen))
        targets = {name: value[every, chosen] for name, value in rows.targets.items() if name != PARAMS}
        params = rows.targets[PARAMS][every, chosen]
        inputs = self.augmentation.apply(rows.inputs, params)
        return type(rows)(rows.labels, targets, inputs, rows.input_table, rows.extra)
