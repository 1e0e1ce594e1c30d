"""`generate --combine specialists`: loading, checking, recording and running the
specialists beside the generalists (the solver itself is transferset/specialists.py).

A specialist is a teacher like any other (same loaders, --weights, --teacher-output)
that returns len(--classes) + 1 logits per row: its classes in --classes order, then
the dustbin. The generalists stay `Context.teachers` (stacked [G, B, C] as ever);
the specialists have other widths, so each runs on its own.
"""

from __future__ import annotations

import torch

from transferset import teachers as teacher_lib
from transferset.errors import UserError
from transferset.generate.config import GenerateConfig, SpecialistSpec
from transferset.specialists import Specialists


def load(cfg: GenerateConfig, device: torch.device) -> list[teacher_lib.Teacher]:
    return [teacher_lib.load_teacher(s.teacher, device, cfg.trust_checkpoint) for s in cfg.specialists]


def fingerprints(cfg: GenerateConfig) -> list[dict]:
    """The specialists' entries of the resume key's teacher list (files by content, classes, the vote rule)."""
    return [{**teacher_lib.fingerprint(s.teacher), "weight": s.teacher.ensemble_weight, **_role(s, cfg)} for s in cfg.specialists]


def describe(cfg: GenerateConfig, loaded: list[teacher_lib.Teacher]) -> list[dict]:
    """The specialists' entries of the provenance's teacher list: `weight` is the KL weight."""
    return [{**t.describe(s.weight), **_role(s, cfg)} for s, t in zip(cfg.specialists, loaded)]


def _role(s: SpecialistSpec, cfg: GenerateConfig) -> dict:
    return {"classes": list(s.classes), "specialist_top": cfg.specialist_top}


def probe(cfg: GenerateConfig, loaded: list[teacher_lib.Teacher], inputs: dict[str, torch.Tensor], num_classes: int) -> None:
    """On the probe batch: every specialist's classes lie in [0, C), leave a dustbin, and
    match its number of outputs (len(--classes) + 1)."""
    for s, t in zip(cfg.specialists, loaded):
        listed = ",".join(map(str, s.classes))
        outside = [c for c in s.classes if not 0 <= c < num_classes]
        if outside:
            raise UserError(f"--classes {listed} of --specialist {s.teacher.spec} has class {outside[0]}, outside [0, {num_classes}) "
                            f"for the generalists' {num_classes} classes; fix --classes")
        if len(s.classes) == num_classes:
            raise UserError(f"--classes {listed} of --specialist {s.teacher.spec} lists all {num_classes} classes, leaving nothing "
                            f"for its dustbin; a specialist covers a subset of the classes")
        width = teacher_lib.run_teachers([t], inputs, cfg.precision).shape[-1]
        if width != len(s.classes) + 1:
            raise UserError(f"--specialist {s.teacher.spec} returns {width} logits per row, but --classes {listed} needs "
                            f"{len(s.classes) + 1} (its {len(s.classes)} classes, then the dustbin); fix --classes or the specialist")


def run(cfg: GenerateConfig, loaded: list[teacher_lib.Teacher], inputs: dict[str, torch.Tensor]) -> tuple[Specialists, list[torch.Tensor]]:
    """The specialists' outputs on one batch, ready for combine(); also the raw logits (for the NaN check)."""
    logits = [teacher_lib.run_teachers([t], inputs, cfg.precision)[0] for t in loaded]  # each (B, n_m + 1)
    device = next(iter(inputs.values())).device
    classes = [torch.tensor(s.classes, dtype=torch.long, device=device) for s in cfg.specialists]
    weights = torch.tensor([s.weight for s in cfg.specialists], dtype=torch.float32, device=device)
    return Specialists(logits, classes, weights, cfg.specialist_top), logits
