"""Ray for `generate --engine ray`: imported only when asked for, joined within a bounded
time, quiet, and sized (how many teacher actors, on which device).

Ray is an optional extra (`pip install 'transferset[ray]'`): nothing else in transferset
imports it. `--ray-address` absent starts Ray on this machine for the run and stops it
after; `auto` or `HOST:PORT` (or `ray://HOST:PORT`) joins a running cluster. A Ray that
this process already started (a test's `ray.init(num_cpus=2)`, a notebook's) is used as
it is and left running.

Ray's own output stays off the user's terminal: worker logs are not forwarded to the
driver (`log_to_driver=False`), Ray's loggers only say errors and Ray Data draws no
progress bars (ours advances by rows written). Its logs stay in /tmp/ray/session_*/logs.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from transferset.errors import UserError, first_line

INSTALL = "pip install 'transferset[ray]'"
# ray.init on an address whose port is open but is no Ray head waits for minutes
# (measured: > 120 s for 127.0.0.1 with another server on the port); ours gives up here.
CONNECT_TIMEOUT_S = 30.0
TCP_TIMEOUT_S = 10.0  # a host that drops packets (no refusal) is given up on after this
DEFAULT_PORT = 6379  # `ray start --head`'s GCS port; 10001 for ray:// (Ray Client)


def import_ray():
    """The `ray` module with Ray Data, or the one-line error that names the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UserError(f"--engine ray needs Ray Data, which is not installed; {INSTALL} (or use --engine local)") from None
    return ray


@contextmanager
def connected(address: str | None) -> Iterator[None]:
    """Ray initialised for the duration of a run (started or joined here, shut down after)."""
    ray = import_ray()
    _quiet()
    if ray.is_initialized():
        yield
        return
    _init(ray, address)
    try:
        yield
    finally:
        ray.shutdown()


def _quiet() -> None:
    # Ray Data logs a failed task's full traceback at ERROR; our one-line error says it.
    for name in ("ray", "ray.data"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False


def _init(ray, address: str | None) -> None:
    """ray.init, refused in one line (naming the address) when the cluster cannot be reached
    within TCP_TIMEOUT_S (nothing listens) or CONNECT_TIMEOUT_S (something else listens)."""
    if address not in (None, "auto"):
        _check_reachable(address)
    options = dict(log_to_driver=False, logging_level=logging.ERROR, runtime_env=worker_env())
    if address is None:
        # Started here, in this thread: Ray ties its processes' lives to the starting thread's.
        try:
            ray.init(include_dashboard=False, **options)
        except Exception as error:
            raise UserError(f"could not start Ray on this machine ({first_line(error)}); --ray-address joins a running cluster") from None
        return
    # Ray's C++ client logs each failed attempt to stderr; the outcome is our one line.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    outcome: dict = {}

    def start() -> None:
        try:
            ray.init(address=address, **options)
            outcome["ok"] = True
        except BaseException as error:  # reported by the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=start, name="transferset-ray-init", daemon=True)
    thread.start()
    thread.join(CONNECT_TIMEOUT_S)
    where = f"at --ray-address {address}"
    if thread.is_alive():
        raise UserError(f"no Ray cluster answered {where} within {CONNECT_TIMEOUT_S:.0f} s; check the address "
                        f"(ray status on the head node prints it) or drop --ray-address to run Ray on this machine")
    if "error" in outcome:
        raise UserError(f"could not join the Ray cluster {where} ({first_line(outcome['error'])}); check the address, "
                        f"or drop --ray-address to run Ray on this machine")


def worker_env() -> dict:
    """Ray workers import transferset and the teachers' factory modules as this process does:
    its import path (less the interpreter's own directories) becomes theirs. On a cluster
    the same paths must hold the same code on every machine (a shared file system, or
    the packages installed)."""
    own = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    paths = [p for p in sys.path if p and Path(p).is_dir() and not own & set(Path(p).resolve().parents)]
    return {"env_vars": {"PYTHONPATH": os.pathsep.join(paths)}}


def _check_reachable(address: str) -> None:
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host:
        host, port = port, str(10001 if address.startswith("ray://") else DEFAULT_PORT)
    try:
        with socket.create_connection((host, int(port)), timeout=TCP_TIMEOUT_S):
            pass
    except ValueError:
        raise UserError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto") from None
    except OSError as error:
        raise UserError(f"cannot reach the Ray cluster at --ray-address {address} ({first_line(error) or 'timed out'}); "
                        f"check the address and that ray start --head runs there") from None


@dataclass(frozen=True)
class ActorPlan:
    """How many teacher actors, and what each one holds."""

    actors: int
    device_type: str  # "cuda" (one GPU per actor) or "cpu"
    torch_threads: int | None = None  # CPU actors: torch threads each (Ray's own default would be 1)
    cpus_per_actor: float = 1.0  # Ray's bookkeeping; reads take a CPU each too

    @property
    def gpus_per_actor(self) -> float:
        return 1.0 if self.device_type == "cuda" else 0.0


def plan_actors(ray, device: str, requested: int | None) -> ActorPlan:
    """GPU actors when the cluster has GPUs (unless --device cpu), one per GPU by default;
    CPU actors otherwise, one per CPU but one by default (Ray books a CPU for each read task)."""
    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), int(resources.get("CPU", 0))
    wants_cuda = device.startswith("cuda")
    if wants_cuda and not gpus:
        raise UserError(f"--device {device} with --engine ray, but the Ray cluster has no GPU; use --device auto or cpu")
    if gpus and device != "cpu":
        actors = requested or gpus
        if actors > gpus:
            raise UserError(f"--ray-actors {actors} needs {actors} GPUs (one per actor), but the Ray cluster has {gpus}; give at most {gpus}")
        return ActorPlan(actors, "cuda")
    actors = requested or max(1, cpus - 1)
    if actors >= max(cpus, 1) and cpus > 1:
        raise UserError(f"--ray-actors {actors} leaves no CPU of the Ray cluster's {cpus} for reading the sources; give at most {cpus - 1}")
    # Ray books one CPU per actor and one per read task, but a read mostly waits on the disk:
    # like LocalEngine (torch on every core, reads and writes beside it), each actor's torch
    # gets its share of all cores, capped by this process's own thread setting (--threads,
    # OMP_NUM_THREADS), which the actors' values then match.
    import torch

    return ActorPlan(actors, "cpu", torch_threads=min(torch.get_num_threads(), max(1, cpus // actors)))
