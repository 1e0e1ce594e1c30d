"""train/world.py: the process's world, read once from torchrun's variables."""

from __future__ import annotations

import pytest
import torch

from train.world import SINGLE_PROCESS, World
from transferset.errors import UserError

CPU = torch.device("cpu")


def test_no_variables_is_one_process_on_the_chosen_device():
    assert World.detect("cpu", environ={}) == World(rank=0, world_size=1, local_rank=0, device=CPU) == SINGLE_PROCESS
    assert SINGLE_PROCESS.is_main


def test_reads_the_environment_by_default(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert World.detect("cpu") == SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert World.detect("cpu") == World(3, 4, 1, CPU)


@pytest.mark.parametrize("environ,expected", [
    ({"WORLD_SIZE": "1"}, (0, 1, 0)),
    ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, (0, 1, 0)),
    ({"RANK": "0"}, (0, 1, 0)),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}, (1, 2, 1)),
    ({"WORLD_SIZE": "8", "RANK": "5", "LOCAL_RANK": "1"}, (5, 8, 1)),  # two machines of 4
    ({"WORLD_SIZE": " 2 ", "RANK": "0", "LOCAL_RANK": "0"}, (0, 2, 0)),
])
def test_torchrun_variables(environ, expected):
    world = World.detect("cpu", environ=environ)
    assert (world.rank, world.world_size, world.local_rank) == expected
    assert world.device == CPU  # no CUDA asked for: every process on the CPU
    assert world.is_main == (world.rank == 0)


@pytest.mark.parametrize("environ,message", [
    ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' must be an integer"),
    ({"WORLD_SIZE": "2", "RANK": "1.0", "LOCAL_RANK": "0"}, "RANK='1.0' must be an integer"),
    ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 must be at least 1"),
    ({"WORLD_SIZE": "-3"}, "WORLD_SIZE=-3 must be at least 1"),
    ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "RANK=2 is outside 0..1 for WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "-1", "LOCAL_RANK": "0"}, "RANK=-1 is outside 0..1 for WORLD_SIZE=2"),
    ({"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "2"}, "LOCAL_RANK=2 is outside 0..1 for WORLD_SIZE=2"),
    ({"WORLD_SIZE": "1", "RANK": "1"}, "RANK=1 is outside 0..0 for WORLD_SIZE=1"),
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but not RANK and LOCAL_RANK"),
    ({"WORLD_SIZE": "2", "RANK": "0"}, "WORLD_SIZE=2 is set but not LOCAL_RANK"),
    ({"RANK": "3"}, "RANK or LOCAL_RANK is set but WORLD_SIZE is not"),
])
def test_bad_variables_are_one_line_errors_naming_the_variable_and_the_fix(environ, message):
    with pytest.raises(UserError) as error:
        World.detect("cpu", environ=environ)
    text = str(error.value)
    assert message in text and "\n" not in text
    assert "unset WORLD_SIZE, RANK and LOCAL_RANK to run one process, or launch with torchrun" in text


def test_the_dataclass_refuses_a_rank_outside_the_world():
    with pytest.raises(UserError, match="rank 2 is outside world size 2"):
        World(rank=2, world_size=2, local_rank=0, device=CPU)
    with pytest.raises(UserError, match="rank 0 is outside world size 0"):
        World(rank=0, world_size=0, local_rank=0, device=CPU)
    with pytest.raises(Exception):  # frozen
        SINGLE_PROCESS.rank = 1


def test_device_flag_is_resolved_once_here():
    assert World.detect("auto", environ={}).device == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="is not a device"):
        World.detect("tpu", environ={})


@pytest.mark.skipif(torch.cuda.is_available(), reason="the input is valid on a machine with CUDA")
def test_cuda_without_a_gpu_is_refused():
    with pytest.raises(UserError, match="no GPU is visible"):
        World.detect("cuda", environ={})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_devices():
    count = torch.cuda.device_count()
    assert World.detect("cuda", environ={}).device == torch.device("cuda")  # one process: as given
    assert World.detect("auto", environ={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0"}).device == torch.device("cuda", 0)
    with pytest.raises(UserError, match=f"only {count} GPU"):
        World.detect(f"cuda:{count}", environ={})
    with pytest.raises(UserError, match="names one GPU for all 2 processes"):
        World.detect("cuda:0", environ={"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})
    with pytest.raises(UserError, match=f"LOCAL_RANK={count} but only {count} GPU"):
        World.detect("cuda", environ={"WORLD_SIZE": str(count + 1), "RANK": str(count), "LOCAL_RANK": str(count)})


