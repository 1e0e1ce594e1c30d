"""Flags shared by `generate` and `train`: the input spec and CPU threads (one definition each).

Torch-free at import time, like every command module: InputSpec is imported
only when the flags are turned into a spec.
"""

from __future__ import annotations

import argparse


def add_input_flags(group, prefix: str = "") -> None:
    """--input-column/-shape/-scale/-mean/-std and --transform; `prefix` qualifies the help."""
    group.add_argument("--input-column", action="append", metavar="NAME", help=f"{prefix}input column (default: pixels)")
    group.add_argument("--input-shape", metavar="D,D,...", help=f"{prefix}per-row input shape, e.g. 1,28,28")
    group.add_argument("--input-scale", metavar="X", help=f"{prefix}multiply inputs by X first, e.g. 1/255")
    group.add_argument("--input-mean", metavar="M[,M...]", help=f"{prefix}subtract per channel after scaling")
    group.add_argument("--input-std", metavar="S[,S...]", help=f"{prefix}divide per channel after the mean")
    group.add_argument("--transform", metavar="package.module:function",
                       help=f"{prefix}turn a pyarrow.RecordBatch of the input columns into a [rows, ...] array (for non-array inputs)")


def input_spec_from_flags(args: argparse.Namespace):
    """The InputSpec the flags describe (errors name the flag)."""
    from transferset.inputs import InputSpec, parse_floats, parse_shape

    scale = parse_floats(args.input_scale, "--input-scale")
    if scale is not None and len(scale) != 1:
        from transferset.errors import UserError

        raise UserError(f"--input-scale {args.input_scale!r} must be one number, like 1/255 or 0.5")
    return InputSpec(
        columns=tuple(args.input_column or ["pixels"]),
        shape=parse_shape(args.input_shape),
        scale=scale[0] if scale else 1.0,
        mean=parse_floats(args.input_mean, "--input-mean"),
        std=parse_floats(args.input_std, "--input-std"),
        transform=args.transform,
    )


def add_threads_flag(group, default_help: str = "torch's choice") -> None:
    group.add_argument("--threads", type=int, metavar="N",
                       help=f"CPU threads for torch (default: {default_help}; use 1 per process when several share few cores)")


def cores_but_one() -> int:
    """generate's default torch threads: every core this process may use but one, which its
    reader and writer threads need. torch's default (every core) made them fight the teachers'
    OpenMP threads: on 2 cores generate ran 1.7-1.8x slower (docs/benchmarks.md)."""
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)


def apply_threads(threads: int | None) -> None:
    """torch.set_num_threads, checked. Oversubscribed cores cost 10-20x on 2 shared cores."""
    if threads is None:
        return
    from transferset.errors import UserError

    if threads <= 0:
        raise UserError(f"--threads must be a positive number of threads, got {threads}")
    import torch

    torch.set_num_threads(threads)


def warn_license(license: str | None, command: str) -> None:
    """An unknown license identifier is kept (a hub may know it), with one warning line."""
    if license is None:
        return
    import sys

    from transferset.format.card import license_warning

    warning = license_warning(license)
    if warning:
        print(f"transferset {command}: warning: {warning}", file=sys.stderr)
