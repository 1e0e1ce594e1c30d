"""Start several `transferset` commands at the same instant, as separate processes.

    python tests/race.py ROUNDS.json  ->  prints JSON: per round, per command, [exit code, stderr]

ROUNDS.json is a list of rounds, each a list of argv lists. The driver imports the
CLI once and then, per round, forks one child per command: the children start
within a millisecond of each other (a race that separate interpreters, each
importing torch for a second or two, would mostly miss). Each child runs
`cli.main(argv)` and exits with its code; its stderr goes to a file.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import cli  # noqa: E402  (torch and the commands, imported once before any fork)
import torch  # noqa: E402

torch.set_num_threads(1)  # no thread pool exists before the fork


def _child(argv: list[str], err_path: str, gate: int) -> None:
    err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    sys.stderr = os.fdopen(2, "w", buffering=1)
    os.read(gate, 1)  # every child waits here until all are forked
    try:
        code = cli.main(argv)
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else 1
    except BaseException:  # noqa: BLE001
        import traceback

        traceback.print_exc()
        code = 99
    sys.stderr.flush()
    os._exit(code)


def run_round(commands: list[list[str]], scratch: Path) -> list[list]:
    gate_read, gate_write = os.pipe()
    children = []
    for number, argv in enumerate(commands):
        err_path = str(scratch / f"err-{number}")
        pid = os.fork()
        if pid == 0:
            os.close(gate_write)
            _child(argv, err_path, gate_read)
        children.append((pid, err_path))
    os.close(gate_read)
    os.write(gate_write, b"x" * len(commands))  # go
    os.close(gate_write)
    results = []
    for pid, err_path in children:
        _, status = os.waitpid(pid, 0)
        results.append([os.waitstatus_to_exitcode(status), Path(err_path).read_text()])
    return results


def main() -> None:
    rounds = json.loads(Path(sys.argv[1]).read_text())
    with tempfile.TemporaryDirectory() as scratch:
        print(json.dumps([run_round(commands, Path(scratch)) for commands in rounds]))


if __name__ == "__main__":
    main()
