"""Run an iterator on a background thread, `depth` items ahead of its consumer.

Both stages use it: generate reads and converts source batches ahead of the teachers
(generate/engines.py), and the trainer makes a views set's batches (view choice,
replay, decode) ahead of the training step (train/stream.py). torch's kernels and
pyarrow's decoding release the GIL, so producer and consumer overlap on two cores.

What it keeps exact:
* the order: one producer, one FIFO queue; the consumer sees the producer's batches in
  its order, so the batches (rows, views, replayed tensors) are those of the plain iterator;
* resume: the trainer counts the batches it has applied, not the ones produced; batches
  prefetched but unused at a checkpoint are recomputed on resume (they are pure functions
  of (seed, epoch, position));
* errors: whatever the producer raises (a UserError naming a damaged file) is raised again
  by the consumer at that batch, the same exception with the same one-line message;
* memory: at most `depth` batches wait in the queue, plus the one being made.

When the consumer stops early (a break, an exception, a signal) the producer is told to
stop, the queue drained, the producer's iterator closed on its own thread and the thread
joined before the consumer returns: no thread keeps reading windows behind a new epoch,
and none is left inside Arrow when the interpreter tears down (a reader thread there can
abort the process after its error was printed, "terminate called without an active
exception", apache/arrow#34314).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterator, TypeVar

T = TypeVar("T")
_DONE = object()
_POLL_S = 0.05  # how often a producer blocked on a full queue looks for a stop


def prefetched(make: Callable[[], Iterator[T]], depth: int, name: str = "transferset-prefetch") -> Iterator[T]:
    """The items of `make()`, produced on a background thread at most `depth` ahead.
    depth 0: `make()` itself, on the caller's thread."""
    if depth <= 0:
        yield from make()
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    thread = threading.Thread(target=_produce, args=(make, ready, stop), name=name, daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is _DONE:
                return
            if isinstance(item, _Raised):
                raise item.error.with_traceback(item.error.__traceback__)
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on the full queue, then wait for it to notice
            _drain(ready)
            thread.join(timeout=_POLL_S)


class _Raised:
    """An exception of the producer, carried to the consumer."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


def _produce(make: Callable[[], Iterator[T]], ready: queue.Queue, stop: threading.Event) -> None:
    items = None
    try:
        items = make()
        for item in items:
            if not _put(ready, item, stop):
                return
        _put(ready, _DONE, stop)
    except BaseException as error:  # noqa: BLE001 -- every failure is the consumer's to raise
        _put(ready, _Raised(error), stop)
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            close()  # the producer's own cleanup (its window read-ahead thread) runs here, on this thread


def _put(ready: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting for room; False when the consumer has stopped."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _drain(ready: queue.Queue) -> None:
    try:
        while True:
            ready.get_nowait()
    except queue.Empty:
        pass
