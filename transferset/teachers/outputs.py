"""What a teacher's forward returned -> its logits, and fixed-batch programs.

A teacher returns a tensor of logits, or something that names them: an object
with a `.logits` tensor (Hugging Face), or a dict with a `logits` key. Any other
tuple, list or dict is ambiguous (a model returning `(probs, logits)` would be
distilled on probabilities if we took the first element), so it is refused
until the user names the element with `--teacher-output KEY|INDEX`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from transferset.errors import UserError

_FLAG = "--teacher-output"


def logits_of(out: Any, name: str, choice: str | None) -> Any:
    """The logits in a teacher's output `out`; `choice` is its --teacher-output.

    Whatever is returned that is not a tensor is reported by `run_teachers`."""
    if choice is not None:
        return _chosen(out, name, choice)
    if isinstance(getattr(out, "logits", None), torch.Tensor):
        return out.logits
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list, dict)):
        hint = "KEY" if isinstance(out, dict) else "INDEX"
        raise UserError(
            f"teacher {name!r} returns {describe_output(out)}, and transferset will not guess which part holds the logits; "
            f"name it with {_FLAG} {hint} after that --teacher"
        )
    return out


def _chosen(out: Any, name: str, choice: str) -> Any:
    if isinstance(out, dict):  # Hugging Face ModelOutputs are dicts as well
        if choice not in out:
            keys = ", ".join(map(str, out.keys()))
            raise UserError(f"{_FLAG} {choice!r} is not a key of what teacher {name!r} returns ({describe_output(out)}); use one of: {keys}")
        return out[choice]
    if isinstance(out, (tuple, list)):
        try:
            index = int(choice)
        except ValueError:
            index = None
        if index is None or not -len(out) <= index < len(out):
            raise UserError(
                f"{_FLAG} {choice!r} is not an index of what teacher {name!r} returns ({describe_output(out)}); "
                f"give 0 to {len(out) - 1}"
            )
        return out[index]
    raise UserError(f"{_FLAG} {choice!r} was given, but teacher {name!r} returns {describe_output(out)}, not a tuple, list or dict; drop {_FLAG}")


def describe_output(out: Any, depth: int = 0) -> str:
    """A short structural description: `tuple(Tensor[4, 10] float32, dict(a: Tensor[4]))`."""
    if isinstance(out, torch.Tensor):
        return f"Tensor[{', '.join(map(str, out.shape))}] {str(out.dtype).removeprefix('torch.')}"
    if depth >= 2:
        return type(out).__name__
    if isinstance(out, dict):
        items = [f"{k}: {describe_output(v, depth + 1)}" for k, v in list(out.items())[:6]]
        more = ", ..." if len(out) > 6 else ""
        return f"{type(out).__name__}({', '.join(items)}{more})"
    if isinstance(out, (tuple, list)):
        items = [describe_output(v, depth + 1) for v in out[:6]]
        more = ", ..." if len(out) > 6 else ""
        return f"{type(out).__name__}({', '.join(items)}{more})"
    return type(out).__name__


def in_fixed_batches(run: Callable[[dict[str, torch.Tensor]], Any], inputs: dict[str, torch.Tensor], size: int) -> Any:
    """`run` over batches of exactly `size` rows; the last is padded with copies of
    its first row, and the padded rows' outputs are dropped. Rows are independent
    in inference, so the kept outputs are those of an unpadded run."""
    rows = next(iter(inputs.values())).shape[0]
    outs = []
    for start in range(0, rows, size):
        chunk = {k: v[start:start + size] for k, v in inputs.items()}
        real = next(iter(chunk.values())).shape[0]
        if real < size:
            chunk = {k: torch.cat([v, v[:1].expand(size - real, *v.shape[1:])]) for k, v in chunk.items()}
        out = run(chunk)
        if not isinstance(out, torch.Tensor) or out.ndim < 1 or out.shape[0] != size:
            return out  # not logits per row: run_teachers reports what it is
        outs.append(out[:real])
    return torch.cat(outs) if len(outs) > 1 else outs[0]
