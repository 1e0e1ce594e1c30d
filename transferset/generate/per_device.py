"""`generate --devices cuda:0,cuda:1,...`: one generate process per device, one command.

Each child runs this same command with `--device D --num-writers N --writer-index i`, the
cooperative writers of ownership.py: shard k is written by writer k mod N, so the children
write disjoint shards, and whichever child sees every planned shard finished writes the
manifest. This process only starts them, draws one progress bar (the rows of the shard
records they publish), waits for all of them and reports the first failure as one line
naming its device. A rerun resumes like any generate: each child redoes only its own
unfinished shards. `--devices cpu,cpu` runs two CPU processes (for tests, and for CPU
machines whose cores one process cannot keep busy).

Children die with this process (Linux: PR_SET_PDEATHSIG), so a killed parent leaves no
writer holding its lock when the command is rerun.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from transferset.errors import UserError
from transferset.format.manifest import MANIFEST, read_manifest, read_shard_records
from transferset.progress import counted, progress, say

POLL_S = 0.5
_DEVICE = re.compile(r"cpu|cuda(:\d+)?")
_CHILD_ERROR = re.compile(r"^transferset generate: (error: )?")


def parse_devices(text: str) -> list[str]:
    devices = [d.strip() for d in text.split(",")]
    for d in devices:
        if not _DEVICE.fullmatch(d):
            raise UserError(f"--devices {text!r}: {d!r} is not a device; list cpu, cuda or cuda:N separated by commas")
    return devices


def import_path() -> str:
    """This process's import path (less the interpreter's own directories), for processes it
    starts: they import transferset and the teachers' factory modules as this one does."""
    own = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix)}
    paths = [p for p in sys.path if p and Path(p).is_dir() and not own & set(Path(p).resolve().parents)]
    return os.pathsep.join(paths)


def child_argv(argv: list[str], device: str, index: int, count: int, threads: int | None) -> list[str]:
    """The command's own arguments without --devices, as writer `index` of `count` on `device`."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            kept.append(arg)
    extra = ["--threads", str(threads)] if threads else []
    return [*kept, "--device", device, "--num-writers", str(count), "--writer-index", str(index), "--quiet", *extra]


@dataclass
class _Child:
    device: str
    index: int
    process: subprocess.Popen
    log: Path

    def failure(self, count: int) -> str:
        code = self.process.returncode
        lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        said = _CHILD_ERROR.sub("", lines[-1]) if lines else f"exit status {code}"
        if code < 0:
            said = f"killed by signal {-code}"
        # A refused input (exit 2) says its own fix; after a crash or a kill the rerun resumes.
        resume = "" if code == 2 else "; rerun the same command to resume"
        return f"the process on device {self.device} (writer {self.index} of {count}) failed: {said}{resume}"


def run_per_device(argv: list[str], devices: list[str], out: Path, total_rows: int, threads: int | None, quiet: bool) -> None:
    """Run one child per device to completion; raise the first failure as a UserError."""
    count = len(devices)
    # CPU children share the cores: without --threads each gets its share, not all of them.
    per_cpu_child = threads or max(1, (os.cpu_count() or 1) // max(1, devices.count("cpu")))
    env = dict(os.environ, PYTHONPATH=import_path())
    with tempfile.TemporaryDirectory(prefix="transferset-devices-") as logs:
        children = []
        for index, device in enumerate(devices):
            log = Path(logs) / f"writer-{index}.log"
            args = child_argv(argv, device, index, count, per_cpu_child if device == "cpu" else threads)
            with open(log, "wb") as stderr:
                process = subprocess.Popen([sys.executable, "-m", "cli", *args], stdout=subprocess.DEVNULL, stderr=stderr,
                                           env=env, preexec_fn=_die_with_parent)
            children.append(_Child(device, index, process, log))
        say(f"generate: {count} processes, on {', '.join(devices)}", quiet)
        failed = _wait(children, out, total_rows, quiet)
        if failed:
            raise UserError(failed[0].failure(count))
    if not (out / MANIFEST).exists():
        raise UserError(f"every process on {', '.join(devices)} finished, but {out} has no manifest; rerun the same command to finish it")
    manifest = read_manifest(out)
    say(f"wrote {out}: {counted(manifest.rows, 'row')}, {counted(len(manifest.shards), 'shard')}", quiet)


def _wait(children: list[_Child], out: Path, total_rows: int, quiet: bool) -> list[_Child]:
    """Wait for every child, advancing the bar by published rows; the failed ones, first failure first."""
    failed: list[_Child] = []
    running = list(children)
    seen = set(read_shard_records(out))  # shards finished before this run
    try:
        with progress("generate", total_rows - sum(r.rows for r in read_shard_records(out).values()), quiet) as bar:
            while running:
                time.sleep(POLL_S)
                for child in [c for c in running if c.process.poll() is not None]:
                    running.remove(child)
                    if child.process.returncode != 0:
                        failed.append(child)
                records = read_shard_records(out)
                for index in set(records) - seen:
                    bar.advance(records[index].rows)
                seen |= set(records)
    except BaseException:  # Ctrl-C (or an error here): the children stop too
        for child in running:
            child.process.terminate()
        for child in running:
            child.process.wait()
        raise
    return failed


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL when the parent dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

