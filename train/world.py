"""Which process this is: rank, world size, local rank and device, read once.

torchrun describes each process it starts through environment variables; this is
the one place that reads them:

    WORLD_SIZE   processes in the job                            (default 1)
    RANK         this process, 0..WORLD_SIZE-1                   (default 0)
    LOCAL_RANK   this process on its machine; with CUDA and WORLD_SIZE > 1
                 it picks the GPU, cuda:LOCAL_RANK              (default 0)

`World.detect` reads them (and resolves --device) once; the stream's partition,
checkpoint saving, the metrics log, the process group (distributed.py) and the
loop receive the `World` instead of asking the environment or torch.distributed.
torchrun also sets MASTER_ADDR and MASTER_PORT, which torch.distributed reads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import torch

from transferset.devices import resolve_device
from transferset.errors import UserError
from transferset.progress import counted

_ONE_PROCESS = "unset WORLD_SIZE, RANK and LOCAL_RANK to run one process, or launch with torchrun"


@dataclass(frozen=True)
class World:
    """This process's place in the job. Ranks are 0..world_size-1; rank 0 is the main
    process (the one that writes checkpoints and the metrics log)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise UserError(f"rank {self.rank} is outside world size {self.world_size}; ranks run from 0 to world size - 1")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def detect(cls, device: str = "auto", environ: Mapping[str, str] | None = None) -> "World":
        """The world torchrun's variables describe (one process when none is set), with
        `device` (--device: auto, cpu, cuda or cuda:N) resolved for this process."""
        rank, world_size, local_rank = _read_environment(os.environ if environ is None else environ)
        return cls(rank, world_size, local_rank, _device(device, world_size, local_rank))


# One process on the CPU: the default of readers that only partition by rank (eval, tests, benchmarks).
SINGLE_PROCESS = World(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def _read_environment(environ: Mapping[str, str]) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's variables, each checked."""
    world_size = _integer(environ, "WORLD_SIZE")
    rank = _integer(environ, "RANK")
    local_rank = _integer(environ, "LOCAL_RANK")
    if world_size is None:
        if rank not in (None, 0) or local_rank not in (None, 0):
            raise UserError(f"RANK or LOCAL_RANK is set but WORLD_SIZE is not; {_ONE_PROCESS} (it sets all three)")
        return 0, 1, 0
    if world_size < 1:
        raise UserError(f"WORLD_SIZE={world_size} must be at least 1; {_ONE_PROCESS}")
    if world_size > 1 and (rank is None or local_rank is None):
        missing = " and ".join(name for name, value in (("RANK", rank), ("LOCAL_RANK", local_rank)) if value is None)
        raise UserError(f"WORLD_SIZE={world_size} is set but not {missing}; {_ONE_PROCESS} (it sets all three)")
    rank, local_rank = rank or 0, local_rank or 0
    if not 0 <= rank < world_size:
        raise UserError(f"RANK={rank} is outside 0..{world_size - 1} for WORLD_SIZE={world_size}; {_ONE_PROCESS}")
    if not 0 <= local_rank < world_size:
        raise UserError(f"LOCAL_RANK={local_rank} is outside 0..{world_size - 1} for WORLD_SIZE={world_size}; {_ONE_PROCESS}")
    return rank, world_size, local_rank


def _integer(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name)
    if text is None or not text.strip():
        return None
    try:
        return int(text)
    except ValueError:
        raise UserError(f"{name}={text!r} must be an integer; {_ONE_PROCESS}") from None


def _device(text: str, world_size: int, local_rank: int) -> torch.device:
    """--device for this process: with CUDA and several processes, cuda:LOCAL_RANK."""
    device = resolve_device(text)  # auto / cpu / cuda / cuda:N; refuses CUDA without a GPU
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if world_size > 1:
        if device.index is not None:
            raise UserError(f"--device {text} names one GPU for all {world_size} processes; use --device cuda or auto (each process takes cuda:LOCAL_RANK)")
        if local_rank >= count:
            raise UserError(f"LOCAL_RANK={local_rank} but only {counted(count, 'GPU')} {'is' if count == 1 else 'are'} visible; start at most {count} processes per machine")
        return torch.device("cuda", local_rank)
    if device.index is not None and device.index >= count:
        raise UserError(f"--device {text}: only {counted(count, 'GPU')} visible; use cuda:0..cuda:{count - 1}")
    return device
