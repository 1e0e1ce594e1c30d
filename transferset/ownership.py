"""Who may write an output directory right now, and crash-safe replacement of its contents.

Every command that writes a directory (`generate --out`, `train --out`,
`verify --drop-bad`) claims it first with an advisory `fcntl.flock` on a lock file
inside it. The kernel releases a flock when its holder dies (SIGKILL included), so
a lock of a dead process never blocks: the next command simply takes it over.

    whole-directory owner   LOCK_EX on `.transferset.lock`
    cooperative writer      LOCK_SH on `.transferset.lock` (writers of one set run
    (--num-writers N)        side by side; a whole-directory owner excludes them)
                            + LOCK_EX on `.transferset-writer-<i>.lock` (one
                            process per writer index)

A refused claim names the holder (pid, host, command line: what every holder
writes into the lock file it takes) in one line. Locks are taken without
waiting: a second command on one directory is an error, never a queue.

Crash-safe replacement of a directory's contents (`--overwrite`) is
`transferset/replace.py`; its marker folder (`DISCARD`) is bookkeeping here.

`scope()` brackets one command: claims made inside are released at its end,
and a directory that a failed command created and left empty is removed again.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shlex
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from transferset.errors import UserError
from transferset.io import reporting_write_errors

SET_LOCK = ".transferset.lock"
DISCARD = ".transferset-discard"  # the marker folder of an interrupted replacement
_WRITER_LOCK = ".transferset-writer-{index}.lock"
# A file system without flock (some network mounts) or one we cannot write at all:
# nothing to exclude then (a read-only directory cannot be corrupted by us).
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EROFS, errno.EACCES, errno.EPERM}


def bookkeeping(name: str) -> bool:
    """Entries of ours that are not output: lock files and the discard marker."""
    return name == DISCARD or (name.startswith(".transferset") and name.endswith(".lock"))


def entries(directory: Path) -> list[Path]:
    """What `directory` holds besides our bookkeeping (an empty directory: [])."""
    return [p for p in directory.iterdir() if not bookkeeping(p.name)] if directory.is_dir() else []


# -- locks ---------------------------------------------------------------------------------------


@dataclass
class _Lock:
    path: Path
    fd: int
    exclusive: bool

    def release(self) -> None:
        if self.fd < 0:
            return
        try:
            # Unlink only while holding it exclusively (no one else has it): a racer
            # that opened the old file notices the swap in `_lock` and retries.
            if self.exclusive or _try_flock(self.fd, fcntl.LOCK_EX):
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1


def _try_flock(fd: int, mode: int) -> bool:
    try:
        fcntl.flock(fd, mode | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def _holder(path: Path) -> str:
    """What the holder of `path` wrote there: it writes just after its flock, so wait a moment for it."""
    import time

    text = ""
    for _ in range(100):
        try:
            text = path.read_text(errors="replace").strip().replace("\n", " ")
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.005)
    return "another process"


def _me() -> str:
    command = shlex.join(["transferset", *sys.argv[1:]])[:200]
    return f"pid {os.getpid()} on host {socket.gethostname()} ({command})"


def _lock(path: Path, exclusive: bool, refusal: Callable[[str], str]) -> _Lock | None:
    """flock `path` without waiting; None where the file system offers no locking."""
    for _ in range(100):  # a holder may unlink the file between our open and our flock
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # a failed racer that had created the folder just removed it, empty
            path.parent.mkdir(parents=True, exist_ok=True)
            continue
        except OSError as error:
            if error.errno in _NO_LOCKING:
                return None
            raise
        try:
            got = _try_flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except OSError as error:
            os.close(fd)
            if error.errno in _NO_LOCKING:
                return None
            raise
        if not got:
            os.close(fd)
            raise UserError(refusal(_holder(path)))
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        me = _me().encode() + b"\n"
        os.pwrite(fd, me, 0)  # then cut what a longer earlier holder left: never empty in between
        os.ftruncate(fd, len(me))
        return _Lock(path, fd, exclusive)
    raise UserError(f"could not lock {path}: it keeps being replaced; rerun")


# -- claims and the command scope ----------------------------------------------------------------


@dataclass
class Claim:
    directory: Path
    created: Path | None  # the topmost folder this claim created (None: it existed)
    locks: list[_Lock]
    complete: bool = False  # every lock taken

    def release(self, failed: bool) -> None:
        if failed and self.created is not None and self.complete and self._alone():
            _remove_if_empty(self.directory, self.created, {lock.path for lock in self.locks})
        for lock in reversed(self.locks):
            lock.release()
        self.locks = []

    def _alone(self) -> bool:
        """No other process holds the directory (a cooperative writer checks for the others)."""
        for lock in self.locks:
            if lock.path.name == SET_LOCK and not lock.exclusive:
                if not _try_flock(lock.fd, fcntl.LOCK_EX):
                    return False
                lock.exclusive = True
        return True


_active: list[list[Claim]] = []  # one list per open scope(); claims outside any scope live until exit
_unscoped: list[Claim] = []


@contextmanager
def scope() -> Iterator[None]:
    """Release the claims made inside at the end; after a failure, also remove
    the directories they created that hold nothing of ours."""
    claims: list[Claim] = []
    _active.append(claims)
    failed = True
    try:
        yield
        failed = False
    finally:
        _active.remove(claims)
        for claim in reversed(claims):
            claim.release(failed)


def claim(directory: Path, *, what: str = "--out", writer: tuple[int, int] | None = None) -> Claim:
    """Create `directory` if needed and take it for this process (whole, or as
    writer `index` of `count` when `writer` is given). A held claim is one line
    naming its holder."""
    directory = Path(directory)
    with reporting_write_errors(directory):
        created = _make(directory)
    result = Claim(directory, created, [])
    (_active[-1] if _active else _unscoped).append(result)

    def busy(holder: str) -> str:
        instead = f"or choose another {what}" if what.startswith("--") else "then rerun"
        return f"{what} {str(directory)!r} is in use by {holder}; wait for it to finish (or stop it), {instead}"

    if writer is None:
        lock = _lock(directory / SET_LOCK, True, busy)
        result.locks += [lock] if lock else []
        result.complete = True
        return result
    index, count = writer
    shared = _lock(directory / SET_LOCK, False, busy)
    result.locks += [shared] if shared else []
    own = _lock(directory / _WRITER_LOCK.format(index=index), True,
                lambda holder: f"{what} {str(directory)!r}: writer {index} of {count} is already running as {holder}; "
                               f"give each process its own --writer-index")
    result.locks += [own] if own else []
    result.complete = True
    return result


def exclusive(held: Claim, what: str = "--out") -> None:
    """Make a cooperative writer's claim exclusive (to replace the directory): refused
    while other writers hold it. `downgrade` turns it back."""
    for lock in held.locks:
        if lock.path.name == SET_LOCK and not lock.exclusive:
            if not _try_flock(lock.fd, fcntl.LOCK_EX):
                # Linux may drop the shared lock on a failed conversion: take it back if we can
                # (another command may have taken it meanwhile; the refusal stands either way).
                try:
                    fcntl.flock(lock.fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except OSError:
                    pass
                raise UserError(f"{what} {str(held.directory)!r} is in use by other writers (one is {_holder(lock.path)}); "
                                f"wait for them to finish before --overwrite")
            lock.exclusive = True


def downgrade(held: Claim) -> None:
    for lock in held.locks:
        if lock.path.name == SET_LOCK and lock.exclusive and any(other.path.name != SET_LOCK for other in held.locks):
            fcntl.flock(lock.fd, fcntl.LOCK_SH)
            lock.exclusive = False


def _make(directory: Path) -> Path | None:
    """mkdir -p; the topmost folder this call created itself (None: all existed), so that
    a failed command removes only what it made, never a folder a racing command made."""
    missing = []
    for folder in [directory, *directory.parents]:
        if folder.exists():
            break
        missing.append(folder)
    created = None
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        created = created or folder
    if not directory.is_dir():
        directory.mkdir()  # a file in the way: the caller's "is a file" check came first; this raises
    return created


def _remove_if_empty(directory: Path, top: Path, ours: set[Path]) -> None:
    """Remove `directory` (our own lock files in it first) and its parents up to
    `top`, each only while it is empty (rmdir refuses otherwise)."""
    if any(p not in ours for p in directory.iterdir()):
        return
    try:
        for path in ours:
            path.unlink(missing_ok=True)
        folder = directory
        while True:
            folder.rmdir()
            if folder == top or folder.parent == folder:
                return
            folder = folder.parent
    except OSError:
        return
