"""torch.export programs (`.pt2`): what `transferset train` exports.

Recognised by the archive's own marker (`archive_format` = pt2 inside the zip),
not by the suffix. Checked by `archives.py` before torch sees the file, because
`torch.export.load` would unpickle, eval or compile parts of it.
"""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import torch

from transferset.errors import UserError
from transferset.io import file_sha256
from transferset.teachers import Teacher, TeacherSpec, register
from transferset.teachers.archives import unsafe_export_parts
from transferset.teachers.files import existing, inner_names, teacher_name, zip_names
from transferset.trust import refusal

# The archive's extra file (torch.export.save's `extra_files`) holding the InputSpec
# a student was trained on; train/export.py writes it.
INPUT_SPEC_FILE = "transferset_input.json"


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
        return Teacher(teacher_name(path), "torch.export", file_sha256(path), program.module(), spec, fixed_batch=fixed_batch(program))


def fixed_batch(program: torch.export.ExportedProgram) -> int | None:
    """The batch size a program was exported with when it is fixed (the first
    dimension of its first input is a plain int, not a symbol); None when dynamic."""
    user_inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" and node.name in user_inputs else None
        if isinstance(value, torch.Tensor) and value.ndim >= 1:
            first = value.shape[0]
            return int(first) if isinstance(first, int) else None
    return None


def declared_input(target: str) -> dict | None:
    """The input spec an archive declares (`transferset train` records how its
    student's inputs were made), read from the zip as JSON: nothing is unpickled."""
    names = [n for n in zip_names(target) if n.endswith(f"/extra/{INPUT_SPEC_FILE}") or n == f"extra/{INPUT_SPEC_FILE}"]
    if not names:
        return None
    try:
        with zipfile.ZipFile(target) as archive:
            declared = json.loads(archive.read(names[0]))
    except (OSError, ValueError, zipfile.BadZipFile, RecursionError):
        declared = None
    if not isinstance(declared, dict) or not isinstance(declared.get("columns"), list):
        raise UserError(f"teacher {target!r} carries a damaged input spec ({INPUT_SPEC_FILE}); export it again with transferset train")
    return declared


def refuse_unsafe(path: Path, problems: list[str]) -> None:
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise UserError(refusal(f"--teacher {str(path)!r}", f"parts that would run code from the file when loaded ({problems[0]}{more})"))


register(ExportLoader())
