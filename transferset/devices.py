"""Device selection shared by generate and train (no teacher code in here)."""

from __future__ import annotations

import torch

from transferset.errors import UserError


def resolve_device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UserError(f"--device {text!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {text} asked for CUDA but no GPU is visible; use --device cpu or auto")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {text!r}: only cpu and cuda are supported")
    return device
