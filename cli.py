"""`transferset`: one command, one subcommand per stage of the data flow.

    convert   .npy/.npz/IDX arrays -> a Parquet source
    generate  teacher ensemble over sources -> Parquet transfer set (stage 1)
    inspect   summary of a transfer set
    verify    shard checksums against the manifest
    train     stream a transfer set (or labelled Parquet) into a student (stage 2)
    eval      evaluate a saved student on labelled Parquet
    demo      the whole flow on the bundled sample data

Each subcommand lives in its own module under transferset/commands/ or
train/commands/; the parser and the error contract (a `UserError` is one line
and exit code 2) live in transferset/commands/main.py, so that code inside the
package (the demo) can run a command without importing this file.
"""

from __future__ import annotations

import os
import sys

from transferset.commands.main import COMMANDS, build_parser, main  # noqa: F401 (tests call cli.main in-process)


def entry() -> int:
    """The `transferset` console script and `python -m cli`: `main`, then the exit.

    A torchrun worker leaves without the interpreter's teardown. By the time `main`
    returns, its outputs are written and its process group is left
    (train/distributed.py `finish`); what the teardown still destroys are native
    thread pools (Arrow's, gloo's), and one destroyed while a worker thread is
    joinable aborts the process with "terminate called without an active exception"
    (apache/arrow#34314): in CI, 2 torchrun jobs in about 10 suites, each a run that
    had finished. torchrun then fails the job. Other processes exit normally
    (Ray's and other libraries' exit handlers must run)."""
    code = main()
    if os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):  # a bad value: train has said so already
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(entry())
