"""A trained student's outputs: `student.pt` (state dict) and `student.pt2`.

`student.pt2` is a `torch.export` program of the student in eval mode, mapping
float32 [B, *input_shape] to logits [B, C] at T = 1, with a dynamic batch
dimension. `torch.export.load(path).module()` runs it without the student's
Python code, and `transferset generate --teacher student.pt2` accepts it as a
teacher (a distilled student can teach the next one).

The program maps *preprocessed* inputs, so the archive also carries the InputSpec
the student was trained on (`extra/transferset_input.json`, plain JSON):
generate applies it when no input flags are given, and refuses flags that
contradict it, instead of feeding raw pixels to a student trained on x / 255.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from transferset.errors import UserError, first_line
from transferset.io import atomic_write

STATE_DICT = "student.pt"
PROGRAM = "student.pt2"
CONFIG = "config.json"
INPUT_SPEC_FILE = "transferset_input.json"  # the name transferset/teachers/export.py reads


def save_state_dict(model: torch.nn.Module, out: Path) -> None:
    """CPU copy of the state dict, written atomically (a full disk: one line, no temp file left)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / STATE_DICT, lambda f: torch.save(state, f))


def export_program(model: torch.nn.Module, example: torch.Tensor, out: Path, input_spec: dict | None = None) -> Path:
    """Export a CPU eval-mode copy of `model` with a dynamic batch dimension.

    `example` is a float32 batch [B, *input_shape]; two of its rows are used
    (a batch of 1 would let export specialise the batch size to 1).
    `input_spec`: `InputSpec.to_dict()` of the training inputs, recorded in the
    archive; by default the one the run's config.json resolved.
    """
    if input_spec is None:
        input_spec = _resolved_input(out)
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
    extra = {INPUT_SPEC_FILE: json.dumps(input_spec, sort_keys=True)} if input_spec else None
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))
    return path


def export_lm_program(model: torch.nn.Module, example: torch.Tensor, out: Path) -> Path:
    """A causal-LM student as a program of (input_ids, attention_mask), int64 [B, L] each,
    -> logits [B, L, V], with a dynamic batch dimension (L is fixed: the set's length).
    `example`: token rows [2, 3, L] (train/data.py). The archive carries the token InputSpec."""
    student = copy.deepcopy(model).to("cpu").eval()
    example = example[:2].detach().to("cpu")
    args = (example[:, 0].contiguous(), example[:, 1].contiguous())
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(student, args, dynamic_shapes=({0: batch}, {0: batch}))
    except Exception as error:
        raise UserError(
            f"the student trained and {out / STATE_DICT} is saved, but torch.export failed ({first_line(error)}); "
            f"make the student's forward exportable (no data-dependent Python control flow)"
        ) from None
    spec = _resolved_input(out)
    extra = {INPUT_SPEC_FILE: json.dumps(spec, sort_keys=True)} if spec else None
    path = out / PROGRAM
    atomic_write(path, lambda f: torch.export.save(program, f, extra_files=extra))  # a file object: see export_program
    return path


def _resolved_input(out: Path) -> dict | None:
    """The input spec in `out/config.json` (written before training starts)."""
    try:
        resolved = json.loads((out / CONFIG).read_text()).get("resolved", {})
    except (OSError, ValueError, AttributeError):
        return None
    spec = resolved.get("input") if isinstance(resolved, dict) else None
    return spec if isinstance(spec, dict) else None
