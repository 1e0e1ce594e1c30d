"""A trained student's outputs: `student.pt` (state dict) and `student.pt2`.

`student.pt2` is a `torch.export` program of the student in eval mode, mapping
float32 [B, *input_shape] to logits [B, C] at T = 1, with a dynamic batch
dimension. `torch.export.load(path).module()` runs it without the student's
Python code, and `transferset generate --teacher student.pt2` accepts it as a
teacher (a distilled student can teach the next one).
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

import torch

from transferset.errors import UserError

STATE_DICT = "student.pt"
PROGRAM = "student.pt2"


def save_state_dict(model: torch.nn.Module, out: Path) -> Path:
    """CPU copy of the state dict, written atomically."""
    path = out / STATE_DICT
    tmp = out / f".{STATE_DICT}.tmp-{os.getpid()}"
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path


def export_program(model: torch.nn.Module, example: torch.Tensor, out: Path) -> Path:
    """Export a CPU eval-mode copy of `model` with a dynamic batch dimension.

    `example` is a float32 batch [B, *input_shape]; two of its rows are used
    (a batch of 1 would let export specialise the batch size to 1).
    """
    student = copy.deepcopy(model).to("cpu").eval()
    example = example[:2].detach().to("cpu", torch.float32)
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(student, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise UserError(
            f"the student trained and {out / STATE_DICT} is saved, but torch.export failed ({first_line}); "
            f"make the student's forward exportable (no data-dependent Python control flow)"
        ) from None
    path = out / PROGRAM
    # torch.export.save names the archive's inner folder after the file's stem, so
    # the temp file keeps the final name (inside a temp folder): re-exporting the
    # same weights then gives the same bytes, and the same sha256 as a teacher.
    scratch = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=out))
    try:
        torch.export.save(program, scratch / PROGRAM)
        os.replace(scratch / PROGRAM, path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return path


def load_program(path: Path) -> torch.nn.Module:
    """The exported student as a callable module (what a teacher loader does)."""
    return torch.export.load(str(path)).module()
