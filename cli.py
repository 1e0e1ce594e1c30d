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

import sys

from transferset.commands.main import COMMANDS, build_parser, main  # noqa: F401 (cli.main is the entry point; tests use both)

if __name__ == "__main__":
    sys.exit(main())
