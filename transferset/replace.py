"""Crash-safe replacement of an output directory's contents (`--overwrite`).

`discard` first creates a marker folder inside the directory (naming the command
whose selection it applies), moves the old entries into it by rename, then deletes
the folder. While the marker exists nothing new has been written, so a rerun that
finds it (`finish_discard`) completes the deletion before it looks at anything
else: every kill point is recovered by rerunning the same command.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from transferset.errors import UserError
from transferset.io import reporting_write_errors
from transferset.ownership import DISCARD, entries

_OWNER = "owner"  # inside the marker: which command's selection it is finishing


def discard(directory: Path, select: Callable[[Path], bool] = lambda p: True, owner: str = "generate") -> None:
    """Delete the entries of `directory` that `select` picks (never our bookkeeping),
    recoverably: marker folder first (naming `owner`, the command whose selection
    this is), then renames into it, then one rmtree."""
    trash = directory / DISCARD
    with reporting_write_errors(directory):
        trash.mkdir(exist_ok=True)
        (trash / _OWNER).write_text(owner)  # before anything moves: see finish_discard
        for number, entry in enumerate(p for p in entries(directory) if select(p)):
            os.rename(entry, trash / f"{os.getpid()}-{number}-{entry.name}")
        shutil.rmtree(trash)


def finish_discard(directory: Path, select: Callable[[Path], bool] = lambda p: True, owner: str = "generate") -> bool:
    """Complete a replacement that a kill interrupted (True when there was one), with
    the selection of the command that started it: another command refuses, since its
    selection could delete what that one keeps (a train run's other files)."""
    trash = directory / DISCARD
    if not trash.is_dir():
        return False
    try:
        started_by = (trash / _OWNER).read_text()
    except OSError:  # killed before the owner was written, so before anything moved
        shutil.rmtree(trash, ignore_errors=True)
        return False
    if started_by != owner:
        raise UserError(f"--out {str(directory)!r} holds an interrupted `transferset {started_by} --overwrite`; "
                        f"rerun that command to finish it, or choose another --out")
    discard(directory, select, owner)
    return True
