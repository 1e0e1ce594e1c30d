"""`transferset report`: PNG figures and one self-contained HTML page about a transfer set."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "draw a transfer set: class confusion, entropy and confidence, calibration, members (PNGs + one HTML page)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="transfer-set directory")
    p.add_argument("--out", required=True, metavar="FOLDER",
                   help="folder for index.html and the PNGs (new, empty, or an earlier report, which is replaced)")
    p.add_argument("--open", action="store_true", help="open the page in a web browser, where one exists")


def require_matplotlib() -> None:
    from transferset.errors import UserError

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise UserError('`transferset report` draws with matplotlib, which is not installed; pip install "transferset[report]"') from None


def open_page(page: Path) -> None:
    """Open the page with the default browser; where there is none (a server, CI), say so."""
    import webbrowser

    try:
        browser = webbrowser.get()
    except webbrowser.Error:
        print(f"no web browser found here; open {page} where there is one (it is a single self-contained file)")
        return
    if not browser.open(page.resolve().as_uri()):
        print(f"the web browser did not start; open {page} yourself")


def run(args: argparse.Namespace) -> int:
    require_matplotlib()
    from transferset.report import build_report

    page = build_report(args.directory, args.out)
    if not args.quiet:
        print(f"report of {args.directory} written to {page}")
    if args.open:
        open_page(page)
    return 0
