"""TorchScript archives: a legacy input (torch warns on every call; we silence it).

Recognised by the archive's layout (`data.pkl` beside a `code/` folder). Its
pickles are checked by `archives.py` for globals outside what TorchScript's own
unpickler builds.
"""

from __future__ import annotations

import warnings

import torch

from transferset.errors import UserError
from transferset.io import file_sha256
from transferset.teachers import Teacher, TeacherSpec, register
from transferset.teachers.archives import unsafe_torchscript_parts
from transferset.teachers.export import refuse_unsafe
from transferset.teachers.files import existing, inner_names, teacher_name, zip_names


class TorchScriptLoader:
    kind = "torchscript"

    def recognises(self, target: str) -> bool:
        inner = inner_names(zip_names(target))
        return "data.pkl" in inner and any(name.startswith("code/") for name in inner)

    def fingerprint(self, target: str, spec: TeacherSpec) -> dict:
        return {"spec_sha256": file_sha256(existing(target, "--teacher"))}

    def load(self, target: str, spec: TeacherSpec, trust: bool) -> Teacher:
        path = existing(target, "--teacher")
        if not trust and zip_names(str(path)):
            refuse_unsafe(path, unsafe_torchscript_parts(str(path)))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:
            raise UserError(
                f"teacher {str(path)!r} is not a model transferset can load ({type(error).__name__}); "
                f"give a torch.export .pt2, a TorchScript archive, or package.module:function with --weights"
            ) from None
        return Teacher(teacher_name(path), "torchscript", file_sha256(path), module, spec)


register(TorchScriptLoader())
