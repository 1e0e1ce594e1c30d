"""Engines: who runs the shard jobs, and where.

An engine takes the shard jobs this writer owns and runs them to finished,
published shards (the manifest is not its business). Engines differ only in
how they call the steps of `shard.py`; every engine must produce the same
stored values for the same jobs. Registered by name (`--engine`); an unknown
name lists the known ones.

`LocalEngine` runs in this process with three stages overlapping: a reader
thread prefetches and converts input batches, the caller's thread runs the
teachers, and the writer thread encodes and writes Parquet (pyarrow releases
the GIL while it compresses). On CUDA a fourth overlap (`overlapped`): the next
batch's teachers are queued on a thread while this one is copied to the host and
encoded. Bounded queues keep memory flat.
"""

from __future__ import annotations

import contextlib
import threading
from typing import ContextManager, Iterator, Protocol

import pyarrow as pa
import torch

from transferset.registry import Registry
from transferset.format.schema import parquet_options
from transferset.generate.setup import Context
from transferset.generate.shard import ShardJob, encode_batch, label_batch, read_batches, teach
from transferset.prefetch import prefetched
from transferset.progress import Progress
from transferset.writer import ShardWriter


class Engine(Protocol):
    name: str

    # Optional: `session(cfg)`, a context manager around the whole run, entered before --out is
    # touched (Ray: import it and connect, so a missing package or an unreachable cluster writes nothing).

    def run(self, jobs: list[ShardJob], context: Context, bar: Progress) -> None:
        """Run every job to a published shard (with its record); advance `bar` by rows."""


ENGINES: Registry[Engine] = Registry(lambda engine: engine.name, lambda name, known: f"unknown --engine {name!r}; use one of: {known}")
register, unregister, get_engine = ENGINES.register, ENGINES.unregister, ENGINES.get


class LocalEngine:
    name = "local"
    prefetch_depth = 2  # input batches read ahead of the teachers

    def __init__(self, overlap: bool | None = None) -> None:
        self.overlap = overlap  # None: overlap teachers and encoding on CUDA only

    def run(self, jobs: list[ShardJob], context: Context, bar: Progress) -> None:
        options = parquet_options(context.schema, context.provenance)
        writer = ShardWriter(context.cfg.out, context.schema, options, context.cfg.row_group_rows)
        overlap = context.device.type == "cuda" if self.overlap is None else self.overlap
        try:
            for job in jobs:
                writer.open_shard(job.plan.index)
                # closing(): an error stops and joins the reader thread here, not whenever the
                # traceback that holds this frame is freed (at interpreter teardown, if in a cycle)
                with contextlib.closing(prefetched(lambda job=job: read_batches(job), self.prefetch_depth, "transferset-reader")) as inputs:
                    for rows in (overlapped(job, inputs) if overlap else (label_batch(job, *item) for item in inputs)):
                        writer.write(job.plan.index, rows)
                        bar.advance(rows.num_rows)
                writer.close_shard(job.plan.index)
            writer.finish()
        except BaseException:
            writer.abort()
            raise


def overlapped(job: ShardJob, inputs: Iterator) -> Iterator[pa.RecordBatch]:
    """label_batch for every input batch, with batch i+1's teachers queued (on a thread)
    while this thread encodes batch i: a GPU then computes while the host copies, encodes
    and hands rows to the writer, instead of the two taking turns. On CUDA the encoding
    runs on a side stream that waits for batch i's work only, so its copies to the host
    do not queue behind batch i+1's teachers. At most two batches are on the device (the
    one being encoded and the next: a semaphore, since the thread would otherwise start a
    third while the queue holds the second). The same values as label_batch (the same
    kernels per batch)."""
    slots, done = threading.Semaphore(2), threading.Event()

    def taught() -> Iterator:
        for item in inputs:
            while not slots.acquire(timeout=0.2):
                if done.is_set():  # the consumer stopped (an error): end instead of waiting forever
                    return
            yield teach(job, *item)

    side = torch.cuda.Stream(job.context.device) if job.context.device.type == "cuda" else None
    fetched = prefetched(taught, 1, "transferset-teachers")
    try:
        for batch in fetched:
            if side is None:
                rows = encode_batch(batch)
            else:
                with torch.cuda.stream(side):
                    side.wait_event(batch.ready)
                    rows = encode_batch(batch)
                side.synchronize()  # every use of batch's device tensors is done before they are freed
            del batch
            slots.release()
            yield rows
    finally:
        done.set()  # first: the thread may be waiting for a slot, and closing `fetched` joins it
        fetched.close()


def session(engine: Engine, cfg) -> ContextManager:
    """The engine's session around a run (nothing for engines without one)."""
    start = getattr(engine, "session", None)
    return start(cfg) if start is not None else contextlib.nullcontext()


register(LocalEngine())

from transferset.generate import ray_engine  # noqa: E402,F401  (registers "ray"; imports Ray only when run)
