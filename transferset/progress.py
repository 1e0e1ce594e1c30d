"""Progress reporting: a rich bar on a terminal, plain lines everywhere else.

Long work (generate, train, convert) reports rows done. On a TTY without
`--quiet` that is a rich bar with rows/s and ETA; in CI logs, pipes and files it
is one plain line every few seconds (a redrawn bar is noise there); `--quiet`
prints nothing but the final summary the command prints itself.
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from typing import Iterator

PLAIN_LINE_EVERY_S = 5.0


class Progress:
    """Counts rows; subclasses decide how to show them."""

    def __init__(self, description: str, total: int | None) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self.started = time.perf_counter()

    def advance(self, rows: int) -> None:
        self.done += rows

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def close(self, failed: bool = False) -> None:
        pass


class _Silent(Progress):
    pass


class _PlainLines(Progress):
    def __init__(self, description: str, total: int | None, stream) -> None:
        super().__init__(description, total)
        self.stream = stream
        self.last_print = self.started

    def advance(self, rows: int) -> None:
        super().advance(rows)
        now = time.perf_counter()
        if now - self.last_print >= PLAIN_LINE_EVERY_S:
            self.last_print = now
            self._line()

    def _line(self) -> None:
        total = f"/{self.total:,}" if self.total else ""
        rate = self.rate()
        eta = ""
        if self.total and rate > 0:
            eta = f", ETA {max(self.total - self.done, 0) / rate:.0f} s"
        print(f"{self.description}: {self.done:,}{total} rows, {rate:,.0f} rows/s{eta}", file=self.stream, flush=True)

    def close(self, failed: bool = False) -> None:
        if not failed:  # after an error, the error line is the only thing to read
            self._line()


class _RichBar(Progress):
    def __init__(self, description: str, total: int | None, stream) -> None:
        super().__init__(description, total)
        from rich.console import Console
        from rich.progress import BarColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),  # rich's MofNCompleteColumn prints 60000/60000: no separators
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total, rate="-", count=self._count())

    def _count(self) -> str:
        return f"{self.done:,}/{self.total:,}" if self.total else f"{self.done:,}"

    def advance(self, rows: int) -> None:
        super().advance(rows)
        self._bar.update(self._task, advance=rows, rate=f"{self.rate():,.0f}", count=self._count())

    def close(self, failed: bool = False) -> None:
        self._bar.stop()


@contextmanager
def progress(description: str, total: int | None, quiet: bool = False, stream=None) -> Iterator[Progress]:
    """`with progress("generate", total=rows, quiet=args.quiet) as bar: bar.advance(n)`."""
    stream = stream or sys.stderr
    if quiet:
        bar: Progress = _Silent(description, total)
    elif stream.isatty():
        bar = _RichBar(description, total, stream)
    else:
        bar = _PlainLines(description, total, stream)
    try:
        yield bar
    except BaseException:
        bar.close(failed=True)
        raise
    bar.close()


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """counted(1, "shard") -> "1 shard"; counted(60000, "row") -> "60,000 rows"."""
    return f"{n:,} {noun if n == 1 else (plural or noun + 's')}"


def say(message: str, quiet: bool = False) -> None:
    """A plain status line on stderr (results go to stdout)."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)
