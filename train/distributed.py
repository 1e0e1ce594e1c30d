"""Training on several processes (torchrun): the process group, DDP, and the few
collectives the recipe needs. With one process every function here is a no-op,
so the recipe reads the same for one process and for many.

What each rank does (loop.py):
- every rank builds the same student from the same seed, then takes rank 0's
  checkpoint state when resuming (`broadcast`): only rank 0 touches the run
  directory, so ranks on other machines need no shared file system for it;
- every rank trains on its slice of each global batch (order.py) through DDP,
  which averages the gradients; `loss_weight` makes that average the gradient of
  the whole global batch's mean loss, even where ranks hold unequal slices;
- the epoch's running sums are summed over ranks (`sum_to_main`) before rank 0
  checkpoints or logs them, and rank 0's epoch record (evaluation included: rank
  0 evaluates alone) is broadcast so that every rank takes the same health decision.

The process group's timeout bounds how long the other ranks wait for rank 0's
evaluation and checkpoint writes; a rank that dies is torchrun's to notice (it
stops the others and names the rank).
"""

from __future__ import annotations

import datetime
from typing import Any

import torch
import torch.distributed as dist

from train.world import World

# Ranks wait for rank 0 while it evaluates and writes: allow long evaluations.
GROUP_TIMEOUT = datetime.timedelta(hours=1)


def start(world: World) -> None:
    """Join torchrun's process group (gloo on CPU, NCCL on CUDA); nothing for one process."""
    if world.world_size == 1 or dist.is_initialized():
        return
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    backend = "nccl" if world.device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=world.rank, world_size=world.world_size, timeout=GROUP_TIMEOUT)


def finish(world: World) -> None:
    """Leave the process group together, after rank 0 has written the outputs (a rank
    that exits while others still hold the group can abort in gloo's threads). Only
    on success: after an error, mismatched collectives could pair up wrongly, so the
    failing process just exits and torchrun stops the others."""
    if world.world_size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def barrier(world: World) -> None:
    """Every rank waits here for the others (nothing for one process)."""
    if world.world_size > 1 and dist.is_initialized():
        dist.barrier()


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """The module that training steps call: DDP around `model` on several processes
    (it all-reduces the gradients in backward), `model` itself on one."""
    if world.world_size == 1:
        return model
    device_ids = [world.device.index] if world.device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def broadcast(value: Any, world: World) -> Any:
    """Rank 0's `value` on every rank (pickled by torch.distributed between our own
    processes; nothing read from a user's file is unpickled here)."""
    if world.world_size == 1:
        return value
    box = [value if world.is_main else None]
    dist.broadcast_object_list(box, src=0, device=world.device if world.device.type == "cuda" else None)
    return box[0]


def mean_weight(local_units: torch.Tensor | int, world: World, global_units: int | None = None) -> torch.Tensor | float:
    """The factor on this rank's mean of a loss term that makes DDP's gradient average
    the gradient of the term's mean over the whole global batch.

    A term is a mean over `local_units` on this rank (rows; labelled rows for the hard
    term; target positions for token rows); DDP divides the sum of the ranks' gradients
    by W. Weighting rank r's mean by W * n_r / sum(n) gives sum_r (n_r / sum(n)) *
    grad(mean_r) = grad(global mean). `global_units`, when the caller knows it (the
    rows of a global batch), saves the all-reduce; equal slices then give exactly 1."""
    if world.world_size == 1:
        return 1.0
    if global_units is not None:
        return world.world_size * int(local_units) / max(global_units, 1)
    units = torch.as_tensor(local_units, dtype=torch.float64, device=world.device)
    total = units.clone()
    dist.all_reduce(total)
    return (world.world_size * units / total.clamp(min=1)).to(torch.float32)


def sum_to_main(sums: dict[str, Any], world: World, num_classes: int) -> dict[str, Any]:
    """The epoch's running sums over all ranks on rank 0, zeros on the others (so that a
    later sum over ranks counts every row once). Every rank must call it."""
    if world.world_size == 1:
        return sums
    out = {}
    for name, value in sums.items():
        tensor = torch.as_tensor(value, device=world.device)
        if name == "class_rows" and tensor.dim() == 0:  # grows to [C] at a rank's first labelled batch
            tensor = torch.zeros(num_classes, dtype=torch.int64, device=world.device) + tensor
        tensor = tensor.clone()
        dist.all_reduce(tensor)
        if not world.is_main:
            tensor.zero_()
        out[name] = int(tensor) if name == "rows" else tensor
    return out
