"""The `--augment` grammar: text -> an `Augmentation` (transferset/views/augment.py has the ops).

Ops separated by commas (commas inside parentheses belong to the op), each `name` or
`name(positional, key=value, ...)`; ranges are `LO-HI`. Every problem is one line that
names the op and, for a value out of range, the valid range.
"""

from __future__ import annotations

import math
import re

from transferset.errors import UserError
from transferset.views.augment import (MAX_DEGREES, MAX_SHIFT, MAX_SIZE, Augmentation, HorizontalFlip, RandomResizedCrop,
                                       Rotate, Shift)
from transferset.views.color import FACTORS, MAX_JITTER, ColorJitter

_OP = re.compile(r"^\s*([a-z][a-z-]*)\s*(?:\((.*)\))?\s*$", re.S)
_KNOWN = ("random-resized-crop(SIZE,scale=LO-HI,ratio=LO-HI), hflip(p=P), shift(N), rotate(DEG), "
          "color-jitter(brightness=B,contrast=C,saturation=S)")


def _split_top(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return parts + [current]


def _range(op: str, key: str, text: str, lo: float, hi: float, hi_open: bool = False) -> tuple[float, float]:
    first, _, second = text.partition("-")
    try:
        values = (float(first), float(second or first))
    except ValueError:
        raise UserError(f"--augment {op}: {key}={text} must look like LO-HI, e.g. {key}=0.35-1") from None
    top = f"{hi:g}" if not hi_open else "inf"
    if not (lo < values[0] <= values[1] and (values[1] <= hi or hi_open) and math.isfinite(values[1])):
        raise UserError(f"--augment {op}: {key}={text} is out of range; give {lo:g} < LO <= HI <= {top}")
    return values


def _integer(op: str, text: str, lo: int, hi: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UserError(f"--augment {op}: {what} {text!r} must be a whole number in {lo}..{hi}") from None
    if not lo <= value <= hi:
        raise UserError(f"--augment {op}: {what} {value} is out of range; give {lo}..{hi}")
    return value


def _op(text: str):
    found = _OP.match(text)
    if not found:
        raise UserError(f"--augment {text.strip()!r} is not an op; write ops like {_KNOWN}, separated by commas")
    name, args_text = found.group(1), found.group(2)
    args = [a.strip() for a in _split_top(args_text)] if args_text and args_text.strip() else []
    positional = [a for a in args if "=" not in a]
    keyed = dict(a.split("=", 1) for a in args if "=" in a)
    keyed = {k.strip(): v.strip() for k, v in keyed.items()}
    allowed = {"random-resized-crop": (1, {"scale", "ratio"}), "hflip": (0, {"p"}), "shift": (1, set()), "jitter": (1, set()), "rotate": (1, set()),
               "color-jitter": (0, set(FACTORS))}
    if name not in allowed:
        raise UserError(f"--augment: unknown augmentation {name!r}; known: {_KNOWN}")
    n_positional, keys = allowed[name]
    unknown = sorted(set(keyed) - keys)
    if len(positional) != n_positional or unknown:
        usage = {"random-resized-crop": "random-resized-crop(SIZE[,scale=LO-HI][,ratio=LO-HI])", "hflip": "hflip or hflip(p=P)",
                 "shift": "shift(N)", "jitter": "jitter(N)", "rotate": "rotate(DEG)",
                 "color-jitter": "color-jitter(brightness=B,contrast=C,saturation=S)"}[name]
        raise UserError(f"--augment {text.strip()}: wrong arguments; write {usage}")
    if name == "random-resized-crop":
        size = _integer(name, positional[0], 1, MAX_SIZE, "SIZE")
        scale = _range(name, "scale", keyed["scale"], 0, 1) if "scale" in keyed else (0.08, 1.0)
        ratio = _range(name, "ratio", keyed["ratio"], 0, math.inf, hi_open=True) if "ratio" in keyed else (0.75, 4 / 3)
        return RandomResizedCrop(size, scale, ratio)
    if name == "hflip":
        p = keyed.get("p", "0.5")
        try:
            prob = float(p)
        except ValueError:
            prob = float("nan")
        if not 0 <= prob <= 1:
            raise UserError(f"--augment hflip: p={p} is out of range; give 0 <= p <= 1")
        return HorizontalFlip(prob)
    if name == "color-jitter":
        return _color_jitter(keyed)
    if name == "rotate":
        return Rotate(_integer(name, positional[0], 0, MAX_DEGREES, "DEG"))
    return Shift(_integer(name, positional[0], 0, MAX_SHIFT, "N"))


def _color_jitter(keyed: dict[str, str]) -> ColorJitter:
    """torchvision's factors: X draws a factor in [max(0, 1 - X), 1 + X]; 0 (or absent) leaves it out."""
    values = {}
    for name, text in keyed.items():
        try:
            values[name] = float(text)
        except ValueError:
            values[name] = float("nan")
        if not 0 <= values[name] <= MAX_JITTER:
            raise UserError(f"--augment color-jitter: {name}={text} is out of range; give 0 <= {name} <= {MAX_JITTER:g}")
    if not any(v > 0 for v in values.values()):
        raise UserError("--augment color-jitter needs brightness, contrast or saturation above 0, "
                        "e.g. color-jitter(brightness=0.4,contrast=0.4,saturation=0.4)")
    return ColorJitter(**values)


def parse_augment(text: str) -> Augmentation:
    """`--augment SPEC` -> an Augmentation; every problem is one line naming the op."""
    if not text or not text.strip():
        raise UserError(f"--augment is empty; give ops like {_KNOWN}")
    if text.count("(") != text.count(")"):
        raise UserError(f"--augment {text!r} has unbalanced parentheses")
    return Augmentation(tuple(_op(part) for part in _split_top(text)))
