"""The settings of one `transferset generate` run, validated all at once."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transferset.errors import UserError
from transferset.format.provenance import COMBINE_METHODS, STORAGE_DTYPES
from transferset.inputs import InputSpec
from transferset.teachers import TeacherSpec


@dataclass
class GenerateConfig:
    teachers: list[TeacherSpec]
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
    device: str = "auto"
    precision: str = "fp32"
    engine: str = "local"
    writer_index: int = 0
    num_writers: int = 1
    overwrite: bool = False
    trust_checkpoint: bool = False
    quiet: bool = False
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        problems = []
        if not self.teachers:
            problems.append("no --teacher given; pass at least one")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature > 0):
            problems.append(f"--temperature must be a positive number, got {self.temperature}")
        if self.combine not in COMBINE_METHODS:
            problems.append(f"unknown --combine {self.combine!r}; use arithmetic or geometric")
        if self.storage_dtype not in STORAGE_DTYPES:
            problems.append(f"--storage-dtype must be float16 or float32, got {self.storage_dtype!r}")
        for flag, value in (("--batch-size", self.batch_size), ("--shard-rows", self.shard_rows), ("--row-group-rows", self.row_group_rows)):
            if value <= 0:
                problems.append(f"{flag} must be positive, got {value}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            problems.append(f"--precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if not 0 <= self.writer_index < self.num_writers:
            problems.append(f"--writer-index must be in [0, --num-writers={self.num_writers}), got {self.writer_index}")
        if problems:
            raise UserError("; ".join(problems))
