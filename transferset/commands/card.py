"""`transferset card`: write a transfer set's dataset card (README.md) again."""

from __future__ import annotations

import argparse

HELP = "rewrite a transfer set's dataset card (README.md): after recombine, or to change its license or description"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory", help="transfer-set directory")
    p.add_argument("--license", metavar="ID", help="license identifier, e.g. cc-by-4.0 (default: keep the card's)")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--description", metavar="TEXT", help="what the set is (default: keep the card's)")
    text.add_argument("--description-file", metavar="FILE", help="read the description (Markdown) from FILE")
    p.add_argument("--task", metavar="CATEGORY", help="dataset-hub task category (default: keep the card's, or from the input shape)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferset import ownership
    from transferset.commands.flags import warn_license
    from transferset.format.card import CARD, CardSettings, rewrite_card
    from transferset.format.manifest import read_manifest
    from transferset.progress import say

    warn_license(args.license, "card")
    description = args.description if args.description_file is None else _read_description(args.description_file)
    directory = Path(args.directory)
    read_manifest(directory)  # not a set, an incomplete or a damaged one: refused before anything is claimed
    with ownership.scope():  # not while a generate or verify --drop-bad works on the set
        ownership.claim(directory, what="transfer set")
        manifest = read_manifest(directory)  # again: it may have changed while we waited for nothing
        settings = CardSettings.from_record(manifest.card).merged(args.license, description, args.task)
        rewrite_card(manifest, settings)
    say(f"wrote {directory / CARD} (license {settings.license})", args.quiet)
    return 0


def _read_description(path: str) -> str:
    from transferset.errors import UserError

    try:
        return open(path, encoding="utf-8").read().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--description-file {path!r} cannot be read ({error.__class__.__name__}); give a UTF-8 text file") from None
