"""Run `transferset` commands as subprocesses: a small dependency scheduler with logs.

A `Task` is one `transferset ...` command plus the names of the tasks it needs.
`Runner.run(tasks)` starts every task whose needs are done, at most `jobs` at a
time, in list order (so put the critical path first), and records for each:
the exact command (appended to `<work>/commands.txt` when it starts), its wall
time, its log (stdout + stderr in `<work>/logs/`), and its stdout parsed as JSON
when the task asks for it. With `resume`, a task whose `output_path` exists is
skipped (evaluations have none: they always run, their JSON is the result). The first failure stops the schedule (running tasks
finish) and raises with the command and its log file.

Every command goes through the `transferset` entry point (or, when it is not on
PATH, `python -m cli` from this checkout, the same code): no product internals
are imported here.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Task:
    name: str                      # unique, also the log file's name
    argv: list[str]                # arguments after `transferset`
    stage: str                     # what the timing table groups by
    needs: tuple[str, ...] = ()    # names of tasks that must finish first
    json_stdout: bool = False      # parse stdout as one JSON object
    output_path: Path | None = None  # exists only once the command has finished (see Runner.resume)


@dataclass
class Done:
    task: Task
    seconds: float
    started: float                 # seconds since the runner started
    output: Any = None             # parsed stdout (json_stdout) or None
    log: str = ""
    skipped: bool = False          # finished by an earlier run (--resume)


@dataclass
class Runner:
    work: Path
    jobs: int = 1
    threads: int | None = None     # OMP/MKL threads per command; None = torch's default
    echo: bool = True
    resume: bool = False           # skip tasks whose output_path exists (finished by an earlier run)
    done: dict[str, Done] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.commands = self.work / "commands.txt"
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._started = len(list(self.logs.iterdir()))  # a resumed work dir keeps its old logs
        exe = shutil.which("transferset")
        # Without the console script (checkout not pip-installed), run the same CLI module.
        self.prefix = [exe] if exe else [sys.executable, "-m", "cli"]

    def run(self, tasks: list[Task]) -> None:
        names = [t.name for t in tasks]
        if len(set(names)) != len(names) or set(names) & set(self.done):
            raise ValueError(f"duplicate task names in {names}")
        known = set(names) | set(self.done)
        for t in tasks:
            missing = [n for n in t.needs if n not in known]
            if missing:
                raise ValueError(f"task {t.name} needs unknown task(s) {missing}")
        pending = list(tasks)
        running: dict[Future, Task] = {}
        failure: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            while pending or running:
                if failure is None:
                    for t in [t for t in pending if all(n in self.done for n in t.needs)]:
                        if len(running) >= self.jobs:
                            break
                        pending.remove(t)
                        running[pool.submit(self._execute, t)] = t
                if not running:
                    break
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    running.pop(future)
                    try:
                        result = future.result()
                    except BaseException as error:  # keep the first; let the others finish
                        failure = failure or error
                        continue
                    self.done[result.task.name] = result
        if failure is not None:
            raise failure
        if pending:
            raise RuntimeError(f"tasks never became ready: {[t.name for t in pending]}")

    def _execute(self, task: Task) -> Done:
        command = "transferset " + shlex.join(task.argv)
        if self.resume and task.output_path is not None and task.output_path.exists():
            # Not rerun: rerunning a finished `train` re-exports student.pt2, and the new
            # file's bytes differ, so `generate` would refuse its finished transfer sets.
            if self.echo:
                print(f"[{time.perf_counter() - self.t0:7.1f} s] {task.name}: finished earlier, skipped", file=sys.stderr, flush=True)
            return Done(task, 0.0, time.perf_counter() - self.t0, None, "", skipped=True)
        with self._lock:
            with open(self.commands, "a") as f:
                f.write(command + "\n")
            index, self._started = self._started, self._started + 1
        log = self.logs / f"{index:03d}-{task.name}.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        if self.threads:
            for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
                env[var] = str(self.threads)
        started = time.perf_counter()
        proc = subprocess.run(self.prefix + task.argv, cwd=REPO, env=env, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        log.write_text(f"$ {command}\n# exit {proc.returncode} after {seconds:.1f} s\n"
                       f"## stdout\n{proc.stdout}\n## stderr\n{proc.stderr}")
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise RuntimeError(f"task {task.name} failed (exit {proc.returncode}): {last}\n  command: {command}\n  log: {log}")
        output = json.loads(proc.stdout) if task.json_stdout else None
        if self.echo:
            print(f"[{time.perf_counter() - self.t0:7.1f} s] {task.name}: {seconds:.1f} s", file=sys.stderr, flush=True)
        return Done(task, seconds, started - self.t0, output, str(log))

    def output(self, name: str) -> Any:
        return self.done[name].output

    def timings(self) -> dict[str, Any]:
        """Per stage: commands run, summed command seconds, and wall span (first start to last end)."""
        stages: dict[str, dict[str, Any]] = {}
        for d in self.done.values():
            if d.skipped:
                continue
            s = stages.setdefault(d.task.stage, {"tasks": 0, "task_seconds": 0.0, "first_start": d.started, "last_end": 0.0})
            s["tasks"] += 1
            s["task_seconds"] += d.seconds
            s["first_start"] = min(s["first_start"], d.started)
            s["last_end"] = max(s["last_end"], d.started + d.seconds)
        for s in stages.values():
            s["wall_seconds"] = s.pop("last_end") - s["first_start"]
            del s["first_start"]
        return {
            "stages": stages,
            "tasks": {n: {"stage": d.task.stage, "seconds": d.seconds, "started": d.started, "log": d.log, "skipped": d.skipped}
                      for n, d in self.done.items()},
            "total_wall_seconds": time.perf_counter() - self.t0,
        }
