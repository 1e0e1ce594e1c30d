"""`transferset recombine`: flags -> RecombineConfig -> run_recombine."""

from __future__ import annotations

import argparse

HELP = "a new transfer set from a set's kept member logits: another combine, T, member subset or weights, no teacher"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", metavar="SET", help="a transfer set (generated with --keep-teacher-logits, or geometric to change only T)")
    g = p.add_argument_group("targets (default: the source set's)")
    g.add_argument("--combine", help="arithmetic or geometric mean of the members")
    g.add_argument("--temperature", "-T", type=float, help="softmax temperature T")
    g.add_argument("--members", metavar="I,J,...", help="indices of the source's members to combine, e.g. 0,2 (default: all)")
    g.add_argument("--weights", metavar="W,W,...",
                   help="one ensemble weight per chosen member (default: the source's weights of those members, renormalised)")
    g.add_argument("--drop-teacher-logits", action="store_true",
                   help="do not keep the chosen members' logits in the new set (kept by default, so it can be recombined again)")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="the new transfer-set directory")
    g.add_argument("--overwrite", action="store_true", help="replace an output made with a different configuration")


def _numbers(text: str | None, flag: str, kind, example: str) -> list | None:
    from transferset.errors import UserError

    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if parts == [""]:
        return []
    try:
        return [kind(part) for part in parts]
    except ValueError:
        raise UserError(f"{flag} {text!r} must be comma-separated {example}") from None


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from transferset.recombine import RecombineConfig, run_recombine

    cfg = RecombineConfig(
        source=Path(args.source),
        out=Path(args.out),
        combine=args.combine,
        temperature=args.temperature,
        members=_numbers(args.members, "--members", int, "member indices, e.g. 0,2"),
        weights=_numbers(args.weights, "--weights", float, "numbers, e.g. 1,3"),
        drop_teacher_logits=args.drop_teacher_logits,
        overwrite=args.overwrite,
        quiet=args.quiet,
    )
    run_recombine(cfg)
    return 0
