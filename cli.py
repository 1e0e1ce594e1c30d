"""`transferset`: one command, one subcommand per stage of the data flow.

    convert   .npy/.npz/IDX arrays -> a Parquet source
    generate  teacher ensemble over sources -> Parquet transfer set (stage 1)
    inspect   summary of a transfer set
    verify    shard checksums against the manifest
    train     stream a transfer set (or labelled Parquet) into a student (stage 2)
    eval      evaluate a saved student on labelled Parquet
    demo      the whole flow on the bundled sample data

Each subcommand lives in its own module with `HELP`, `add_arguments(parser)` and
`run(args) -> int`. Those modules import torch only inside `run`, so `--help`
and argument errors answer without paying torch's ~1.2 s import.

Errors: a `UserError` is one line on stderr and exit code 2; anything else is a
bug, reported in one line with a pointer to `--debug` for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module; the order is the order of `transferset --help`.
COMMANDS = {
    "convert": "transferset.commands.convert",
    "generate": "transferset.commands.generate",
    "inspect": "transferset.commands.inspect",
    "verify": "transferset.commands.verify",
    "train": "train.commands.train",
    "eval": "train.commands.eval",
    "demo": "transferset.commands.demo",
}


class _Parser(argparse.ArgumentParser):
    """argparse that exits with code 2 and one line, without the usage dump."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    parser = _Parser(prog="transferset", description="Offline knowledge distillation with Parquet transfer sets.")
    parser.add_argument("--version", action="version", version=f"transferset {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[common])
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("transferset")
    except Exception:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from transferset.errors import UserError

    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"transferset {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        if not isinstance(error, UserError):
            from transferset.manifest import write_failure

            # A disk that is full or read-only is the user's to fix, wherever the write was.
            refused = write_failure(error, getattr(error, "filename", None) or "the output")
            if refused is None:  # a bug: keep the one-line contract, offer the traceback
                print(
                    f"transferset {args.command}: internal error: {type(error).__name__}: {error} "
                    f"(rerun with --debug for the traceback, and please report it)",
                    file=sys.stderr,
                )
                return 1
            error = refused
        print(f"transferset {args.command}: error: {error}", file=sys.stderr)
        return UserError.exit_code

if __name__ == "__main__":
    sys.exit(main())
