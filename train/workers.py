"""`StreamDataset`: one rank's epoch of a `StreamSource` (stream.py) for a DataLoader with
worker processes (`train --workers N`); the workers split the rank's batches, the order
and the batches stay those of `source.epoch`."""

from __future__ import annotations

from typing import Iterator

import torch

from train.batch import Batch
from train.stream import StreamSource
from train.world import SINGLE_PROCESS, World
from transferset.errors import UserError


class StreamDataset(torch.utils.data.IterableDataset):
    """One rank's epoch for `DataLoader(dataset, batch_size=None, num_workers=N)`.

    Each worker yields a disjoint contiguous range of the rank's batches (order.py);
    `start_batch` counts batches the DataLoader had yielded, so resume with the same
    num_workers the checkpoint was written with. With num_workers=0 this is exactly
    `source.epoch(...)`."""

    def __init__(self, source: StreamSource, *, batch_size: int, seed: int, epoch: int, start_batch: int = 0,
                 shuffle: bool = True, world: World = SINGLE_PROCESS, drop_last: bool = False, columns_extra: tuple = ()) -> None:
        super().__init__()
        self.source = source
        self.args = dict(batch_size=batch_size, seed=seed, epoch=epoch, start_batch=start_batch, shuffle=shuffle,
                         world=world, drop_last=drop_last, columns_extra=tuple(columns_extra))
        self._num_batches = source.num_batches(batch_size, world, drop_last)
        if not 0 <= start_batch <= self._num_batches:
            raise UserError(f"resume position {start_batch} is outside this epoch's {self._num_batches} batches; the data, batch size or world size changed since the checkpoint")

    def __len__(self) -> int:
        return self._num_batches - self.args["start_batch"]

    def __iter__(self) -> Iterator[Batch]:
        info = torch.utils.data.get_worker_info()
        worker, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
        return self.source._batches(**self.args, worker=worker, num_workers=num_workers)
