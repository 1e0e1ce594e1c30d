"""The `transferset` program: one parser with a subcommand per command module, and
`main`, which runs one command with the CLI's error contract.

Each command module has `HELP`, `add_arguments(parser)` and `run(args) -> int`,
and imports torch only inside `run`, so `--help` and argument errors answer
without paying torch's ~1.2 s import.

Errors: a `UserError` is one line on stderr and exit code 2; anything else is a
bug, reported in one line with a pointer to `--debug` for the traceback.

The top-level `cli.py` (the installed `transferset` entry point) and `demo`'s
stages both call `main` here, so the demo runs exactly what a user runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings

# name -> module; the order is the order of `transferset --help`.
COMMANDS = {
    "convert": "transferset.commands.convert",
    "generate": "transferset.commands.generate",
    "recombine": "transferset.commands.recombine",
    "inspect": "transferset.commands.inspect",
    "verify": "transferset.commands.verify",
    "report": "transferset.commands.report",
    "ls": "transferset.commands.ls",
    "card": "transferset.commands.card",
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
    """Run `transferset ARGV` (default: sys.argv[1:]); the exit code. Argument errors
    exit through argparse (SystemExit 2), as `--help` and `--version` exit with 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what a command that starts copies of itself repeats
    from transferset.errors import UserError

    if not args.debug:
        # Library warnings (torch, numpy, pyarrow) are not ours to show: our errors and
        # status lines are. --debug lets them through with the traceback.
        warnings.simplefilter("ignore")
    try:
        return int(args._module.run(args) or 0)
    except KeyboardInterrupt:
        print(f"transferset {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as error:
        if args.debug:
            raise
        if not isinstance(error, UserError):
            from transferset.io import write_failure

            # A disk that is full or read-only is the user's to fix, wherever the write was.
            refused = write_failure(error, getattr(error, "filename", None) or "the output")
            if refused is None:  # a bug: keep the one-line contract, offer the traceback
                from transferset.errors import first_line

                print(
                    one_line(f"transferset {args.command}: internal error: {type(error).__name__}: {first_line(error)} "
                             f"(rerun with --debug for the traceback, and please report it)"),
                    file=sys.stderr,
                )
                return 1
            error = refused
        print(one_line(f"transferset {args.command}: error: {error}"), file=sys.stderr)
        return UserError.exit_code


def one_line(message: str) -> str:
    """The CLI's error contract is one line: a library's trailing newline is dropped,
    and a newline or carriage return inside (a path that holds one) is escaped."""
    return message.strip().replace("\r", "\\r").replace("\n", "\\n")
