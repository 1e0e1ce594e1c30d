"""The input spec of a generate run, when teachers declare the inputs they expect.

A `student.pt2` written by `transferset train` maps preprocessed inputs
(`x * scale`, then mean/std) and records that preprocessing in its archive
(`export.py`: `declared_input`). Generate then takes, field by field, what the
user gave on the command line and otherwise what the teacher declares; a flag
that contradicts the declaration is refused, naming both values, because it
would feed the teacher inputs it never saw (raw pixels into a student trained
on x / 255 give near-one-hot targets, silently).
"""

from __future__ import annotations

import argparse
import math

from transferset.errors import UserError
from transferset.inputs import InputSpec, parse_floats, parse_shape

# field -> the flag that sets it
_FLAGS = {"shape": "--input-shape", "scale": "--input-scale", "mean": "--input-mean", "std": "--input-std",
          "transform": "--transform"}


def declared_inputs(teachers) -> list[tuple[str, dict]]:
    """(teacher spec, declared input dict) for every teacher that declares one."""
    from transferset.teachers import resolve
    from transferset.teachers.export import declared_input

    found = []
    for spec in teachers:
        try:
            loader, target = resolve(spec)
        except UserError:
            continue  # an unloadable teacher is reported, in its turn, by the loader
        if loader.kind == "export":
            declared = declared_input(target)
            if declared is not None:
                found.append((spec.spec, declared))
    return found


def input_spec_for(args: argparse.Namespace, teachers, say) -> InputSpec:
    """The InputSpec from the input flags, completed by (and checked against) what the
    teachers declare. `say(line)` reports a declaration that was applied."""
    from transferset.commands.flags import input_spec_from_flags

    declared = declared_inputs(teachers)
    if not declared:
        return input_spec_from_flags(args)
    given = _given(args)
    name, spec = declared[0]
    theirs = {field: _value(spec, field) for field in _FLAGS}
    for other_name, other in declared[1:]:
        differs = [f for f in _FLAGS if not _same(f, theirs[f], _value(other, f))]
        if differs:
            f = differs[0]
            raise UserError(
                f"teachers {name!r} and {other_name!r} were trained on different inputs ({f}: {_show(theirs[f])} vs "
                f"{_show(_value(other, f))}); generate from each separately"
            )
    for field, value in given.items():
        if not _same(field, value, theirs[field]):
            raise UserError(
                f"{_FLAGS[field]} {_show(value)} contradicts teacher {name!r}, which declares {field} {_show(theirs[field])} "
                f"(the inputs it was trained on); drop {_FLAGS[field]} to use the teacher's, or export a teacher for these inputs"
            )
    if theirs["transform"] is not None and "transform" not in given:
        raise UserError(
            f"teacher {name!r} was trained through --transform {theirs['transform']}; pass that --transform "
            f"(transferset does not import code a file names)"
        )
    taken = [f for f in ("shape", "scale", "mean", "std") if f not in given and theirs[f] is not None]
    if taken:
        say(f"inputs as teacher {name!r} declares: " + ", ".join(f"{f} {_show(theirs[f])}" for f in taken))
    merged = {**theirs, **given}
    return InputSpec(
        columns=tuple(args.input_column) if args.input_column else tuple(spec["columns"]),
        shape=merged["shape"], scale=merged["scale"] if merged["scale"] is not None else 1.0,
        mean=merged["mean"], std=merged["std"], transform=merged["transform"],
    )


def _given(args: argparse.Namespace) -> dict:
    """The input fields the user set on the command line (parsed; absent ones left out)."""
    given = {}
    if args.input_shape is not None:
        given["shape"] = parse_shape(args.input_shape)
    if args.input_scale is not None:
        scale = parse_floats(args.input_scale, "--input-scale")
        if len(scale) != 1:
            raise UserError(f"--input-scale {args.input_scale!r} must be one number, like 1/255 or 0.5")
        given["scale"] = scale[0]
    for field in ("mean", "std"):
        text = getattr(args, f"input_{field}")
        if text is not None:
            given[field] = parse_floats(text, f"--input-{field}")
    if args.transform is not None:
        given["transform"] = args.transform
    return given


def _value(spec: dict, field: str):
    value = spec.get(field)
    if field == "scale":
        return float(value) if isinstance(value, (int, float)) else 1.0
    if field in ("shape", "mean", "std") and value is not None:
        if not isinstance(value, list):
            raise UserError(f"a teacher's declared input {field} {value!r} is damaged; export it again with transferset train")
        return tuple(int(v) if field == "shape" else float(v) for v in value)
    return value


def _same(field: str, a, b) -> bool:
    """Equal as preprocessing: no mean is a mean of 0, no std a std of 1, one value
    stands for every channel; floats within 1e-6 relative (1/255 written as 0.00392)."""
    if field in ("shape", "transform"):
        return a == b
    if field == "scale":
        return math.isclose(a, b, rel_tol=1e-6)
    neutral = (0.0,) if field == "mean" else (1.0,)
    a, b = a or neutral, b or neutral
    if len(a) != len(b) and 1 not in (len(a), len(b)):
        return False
    width = max(len(a), len(b))
    a, b = (a * width if len(a) == 1 else a), (b * width if len(b) == 1 else b)
    return all(math.isclose(x, y, rel_tol=1e-6, abs_tol=1e-9) for x, y in zip(a, b))


def _show(value) -> str:
    if value is None:
        return "none"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
