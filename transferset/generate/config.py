"""The settings of one `transferset generate` run, validated all at once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transferset.errors import UserError
from transferset.format.provenance import COMBINE_METHODS, STORAGE_DTYPES
from transferset.inputs import InputSpec
from transferset.teachers import TeacherSpec


@dataclass(frozen=True)
class SpecialistSpec:
    """One --specialist FILE --classes LIST: a model over `classes` plus one dustbin output."""

    teacher: TeacherSpec  # its --teacher-weight, if given, is its KL weight (default 1)
    classes: tuple[int, ...]  # in the order of its outputs; its last output is the dustbin

    @property
    def weight(self) -> float:
        return 1.0 if self.teacher.ensemble_weight is None else float(self.teacher.ensemble_weight)


@dataclass
class GenerateConfig:
    teachers: list[TeacherSpec]  # the generalists, over every class
    sources: list[str]
    input_spec: InputSpec
    out: Path
    label_column: str | None = "label"
    id_column: str | None = None
    combine: str = "geometric"
    temperature: float = 1.0
    target_kind: str = "dense"
    target_options: dict = field(default_factory=dict)  # the codec's own settings
    storage_dtype: str = "float16"
    keep_teacher_logits: bool = False
    class_names: list[str] | None = None
    batch_size: int = 1024
    shard_rows: int = 131072
    row_group_rows: int = 32768
    inputs: str = "copy"  # "reference": store source rows, not input copies (format/references.py)
    device: str = "auto"
    precision: str = "fp32"
    engine: str = "local"
    # --engine ray only; never fingerprinted (an engine decides where the work runs, not the values)
    ray_address: str | None = None  # None: start Ray on this machine; "auto" or HOST:PORT: join a cluster
    ray_actors: int | None = None  # None: one per GPU of the cluster, else one per CPU but one (reads need a CPU)
    writer_index: int = 0
    num_writers: int = 1
    overwrite: bool = False
    trust_checkpoint: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)
    # The dataset card's settings (format/card.py): None keeps what the card has.
    # Never fingerprinted: a card describes the set, it does not change it.
    card_license: str | None = None
    card_description: str | None = None
    card_task: str | None = None
    specialists: list[SpecialistSpec] = field(default_factory=list)  # --combine specialists (specialists.py)
    specialist_top: int = 1  # a specialist votes where the generalists' top-n classes meet its classes

    def validate(self) -> None:
        problems = []
        if not self.teachers:
            problems.append("no --teacher given; pass at least one")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be a positive number, got {self.temperature}")
        if self.combine not in COMBINE_METHODS:
            problems.append(f"unknown --combine {self.combine!r}; use arithmetic or geometric (or specialists, with --specialist)")
        problems += self._specialist_problems()
        if self.storage_dtype not in STORAGE_DTYPES:
            problems.append(f"--storage-dtype must be float16 or float32, got {self.storage_dtype!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--shard-rows", self.shard_rows), ("--row-group-rows", self.row_group_rows)):
            if value <= 0:
                problems.append(f"{flag} must be positive, got {value}")
        if self.inputs not in ("copy", "reference"):
            problems.append(f"--inputs must be copy or reference, got {self.inputs!r}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.writer_index < self.num_writers:
            problems.append(f"--writer-index must be in [0, --num-writers={self.num_writers}), got {self.writer_index}")
        problems += self._engine_problems()
        if self.target_kind == "views":
            from transferset.views.expand import views_problems

            problems += views_problems(self)
        if problems:
            raise UserError("; ".join(problems))

    def _engine_problems(self) -> list[str]:
        problems = []
        if self.engine != "ray":
            for flag, value in (("--ray-address", self.ray_address), ("--ray-actors", self.ray_actors)):
                if value is not None:
                    problems.append(f"{flag} applies to --engine ray, not --engine {self.engine}; add --engine ray or drop {flag}")
        elif self.ray_actors is not None and self.ray_actors <= 0:
            problems.append(f"--ray-actors must be positive, got {self.ray_actors}")
        if self.engine == "ray" and self.target_kind == "views":
            # Ray's actors label the rows as read; the views are made on the local engine's reader
            # (CPU) or in teach (CUDA), and a CPU actor would run the teachers on unexpanded rows.
            problems.append("--views is not supported with --engine ray yet; use --engine local or --devices")
        return problems

    def _specialist_problems(self) -> list[str]:
        """What is wrong with the --specialist flags that needs no model (classes vs C: at the probe batch)."""
        problems = []
        if self.combine == "specialists" and not self.specialists:
            problems.append("--combine specialists needs at least one --specialist FILE --classes LIST")
        if self.specialists and self.combine != "specialists":
            problems.append(f"--specialist is used only by --combine specialists, not --combine {self.combine}; pass --combine specialists")
        if self.specialists and self.keep_teacher_logits:
            problems.append("--keep-teacher-logits cannot store specialists' logits (a specialist has len(--classes) + 1 outputs, "
                            "not one per class); drop --keep-teacher-logits")
        if not (isinstance(self.specialist_top, int) and self.specialist_top >= 1):
            problems.append(f"--specialist-top must be a positive number of classes, got {self.specialist_top}")
        for s in self.specialists:
            repeated = sorted({c for c in s.classes if s.classes.count(c) > 1})
            if repeated:
                problems.append(f"--classes {_listed(s.classes)} of --specialist {s.teacher.spec} repeats class "
                                f"{_listed(repeated)}; list each class once")
            if not (math.isfinite(s.weight) and s.weight >= 0):
                problems.append(f"--teacher-weight {s.weight} of --specialist {s.teacher.spec} must be a non-negative number")
        return problems


def _listed(classes) -> str:
    return ",".join(str(c) for c in classes)
