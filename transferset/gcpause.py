"""Start-up without the cyclic garbage collector.

Importing torch and deserialising `.pt2` teachers (torch's export deserialiser pulls in
dynamo and sympy) allocate about a million long-lived objects and almost no garbage
cycles, yet the collector walks them again and again while they are built: ~1 s of CPU
per process on the 2-core machines, the cost of ~10,000 MNIST rows through three
1200-wide teachers (`benchmarks/bench_vs_hf.py`; docs/benchmarks.md). So a command pauses
the collector for its start-up and resumes it once the teachers are loaded, after
`gc.freeze()` moves what start-up built out of every later collection's way (it lives
until the process exits anyway).

Only a pause this module started is resumed: a caller that disabled the collector
itself keeps it disabled. Only the first start-up of a process is paused and frozen:
a process that runs generate again (tests, a notebook) would otherwise freeze the
garbage alive at each later start-up for good.
"""

from __future__ import annotations

import gc

_paused = False
_frozen = False  # once per process: a later pause would freeze whatever garbage is alive then, for good


def pause() -> None:
    global _paused
    if gc.isenabled() and not _frozen:
        gc.disable()
        _paused = True


def resume() -> None:
    global _paused, _frozen
    if _paused:
        _paused, _frozen = False, True
        gc.freeze()
        gc.enable()
