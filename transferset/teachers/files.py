"""What a teacher file is, by its contents, and the names and errors around it."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from transferset.errors import UserError

_ANY_FORM = "give a torch.export .pt2, a TorchScript archive, or package.module:function with --weights"


def existing(path: str | None, flag: str) -> Path:
    if not path or not os.path.isfile(path):
        raise UserError(f"{flag} file {path!r} does not exist; check the path")
    return Path(path)


def zip_names(path: str) -> list[str]:
    """Member names of a zip archive, or [] for anything else."""
    if not os.path.isfile(path) or not zipfile.is_zipfile(path):
        return []
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def inner_names(names: list[str]) -> set[str]:
    """Member paths below the archive's root folder (both formats nest everything in one)."""
    return {name.split("/", 1)[1] for name in names if "/" in name}


def teacher_name(path: Path) -> str:
    """The file's stem, or its folder's name when the stem says nothing
    (every `transferset train` run exports `RUN/student.pt2`)."""
    generic = {"student", "model", "teacher", "program", "module"}
    return f"{path.resolve().parent.name}" if path.stem in generic else path.stem


def describe_unknown(spec: str, kinds: tuple[str, ...]) -> str:
    """The refusal for a --teacher no loader recognises."""
    if not os.path.exists(spec):
        return f"--teacher file {spec!r} does not exist; check the path"
    if os.path.isdir(spec):
        return (f"teacher {spec!r} is a directory without config.json, not a model transferset can load; "
                f"give a Hugging Face model directory (save_pretrained), a torch.export .pt2, a TorchScript archive, "
                f"or package.module:function")
    reason = "not a zip archive" if not zipfile.is_zipfile(spec) else "a zip archive of no known model format"
    if spec.endswith(".pt2"):
        return f"teacher {spec!r} is not a torch.export program ({reason}); export it with torch.export.save, or use TorchScript or a factory"
    return f"teacher {spec!r} is not a model transferset can load ({reason}); {_ANY_FORM} (or name the form: {', '.join(k + ':' for k in kinds)})"
