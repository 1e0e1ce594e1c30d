"""A trained student's outputs: `student.pt` (state dict) and `student.pt2`.

`student.pt2` is a `torch.export` program of the student in eval mode, mapping
float32 [B, *input_shape] to logits [B, C] at T = 1, with a dynamic batch
dimension. `torch.export.load(path).module()` runs it without the student's
Python code, and `transferset generate --teacher student.pt2` accepts it as a
teacher (a distilled student can teach the next one).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from transferset.errors import UserError, first_line
from transferset.io import atomic_write

STATE_DICT = "student.pt"
PROGRAM = "student.pt2"


def save_state_dict(model: torch.nn.Module, out: Path) -> None:
    """CPU copy of the state dict, written atomically (a full disk: one line, no temp file left)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / STATE_DICT, lambda f: torch.save(state, f))


def export_program(model: torch.nn.Module, example: torch.Tensor, out: Path) -> Path:
    """Export a CPU eval-mode copy of `model` with a dynamic batch dimension.

    `example` is a float32 batch [B, *input_shape]; two of its rows are used
    (a batch of 1 would let export specialise the batch size to 1).
    """
    student = copy.deepcopy(model).to("cpu").eval()
    example = example[:2].detach().to("cpu")  # keep the dtype: a --transform may feed token ids
    if example.shape[0] < 2:
        example = example.expand(2, *example.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(student, (example,), dynamic_shapes=({0: batch},))
    except Exception as error:
        raise UserError(
            f"the student trained and {out / STATE_DICT} is saved, but torch.export failed ({first_line(error)}); "
            f"make the student's forward exportable (no data-dependent Python control flow)"
        ) from None
    path = out / PROGRAM
    # Saved into a file object, not a path: given a path, torch's archive writer
    # aborts the whole process (SIGABRT from a C++ destructor) when the disk fills
    # up; through a file the failure is an exception that atomic_write turns into
    # one line. The archive's inner folder is then always named "archive" (from a
    # path it would be the file's stem), so re-exporting the same weights still
    # gives the same bytes, and the same sha256 as a teacher.
    atomic_write(path, lambda f: torch.export.save(program, f))
    return path
