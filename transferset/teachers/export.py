"""torch.export programs (`.pt2`): what `transferset train` exports.

Recognised by the archive's own marker (`archive_format` = pt2 inside the zip),
not by the suffix. Checked by `archives.py` before torch sees the file, because
`torch.export.load` would unpickle, eval or compile parts of it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from transferset.errors import UserError
from transferset.io import file_sha256
from transferset.teachers import Teacher, TeacherSpec, register
from transferset.teachers.archives import unsafe_export_parts
from transferset.teachers.files import existing, inner_names, teacher_name, zip_names
from transferset.trust import refusal


class ExportLoader:
    kind = "export"

    def recognises(self, target: str) -> bool:
        inner = inner_names(zip_names(target))
        return "archive_format" in inner or "serialized_exported_program.json" in {n.rsplit("/", 1)[-1] for n in zip_names(target)}

    def fingerprint(self, target: str, spec: TeacherSpec) -> dict:
        return {"spec_sha256": file_sha256(existing(target, "--teacher"))}

    def load(self, target: str, spec: TeacherSpec, trust: bool) -> Teacher:
        path = existing(target, "--teacher")
        not_exported = f"teacher {str(path)!r} is not a torch.export program"
        if not zip_names(str(path)):
            raise UserError(f"{not_exported}; export it with torch.export.save, or use TorchScript or a factory")
        if not trust:  # torch.export.load unpickles and evals parts of the archive: look first
            refuse_unsafe(path, unsafe_export_parts(str(path)))
        export_log = logging.getLogger("torch.export")
        level = export_log.level
        export_log.setLevel(logging.CRITICAL)  # torch logs a traceback before raising; our one line says it all
        try:
            program = torch.export.load(str(path))
        except Exception as error:
            raise UserError(f"{not_exported} ({type(error).__name__}); export it with torch.export.save, or use TorchScript or a factory") from None
        finally:
            export_log.setLevel(level)
        return Teacher(teacher_name(path), "torch.export", file_sha256(path), program.module(), spec)


def refuse_unsafe(path: Path, problems: list[str]) -> None:
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise UserError(refusal(f"--teacher {str(path)!r}", f"parts that would run code from the file when loaded ({problems[0]}{more})"))


register(ExportLoader())
