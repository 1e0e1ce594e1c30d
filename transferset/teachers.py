"""Teachers: load each ensemble member and run it over input batches.

A teacher maps an input batch [B, ...] to logits [B, C]. Three forms:

* `path.pt2`   a `torch.export` program (what `transferset train` exports);
* `path.pt`/`.ts`/... a TorchScript archive (legacy: torch warns on every call);
* `package.module:function` a factory returning an nn.Module, optionally with
  `--weights state_dict.pt`, loaded with `weights_only=True`: a teacher file is
  data, never code we unpickle.

Only `transferset generate` imports this module. The trainer must not (a test
checks), so that training from a transfer set never needs a teacher.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from transferset.archives import unsafe_export_parts, unsafe_torchscript_parts
from transferset.errors import UserError, first_line
from transferset.inputs import load_callable
from transferset.manifest import file_sha256
from transferset.trust import needs_full_unpickling, refusal


@dataclass(frozen=True)
class TeacherSpec:
    """What the user named on the command line for one ensemble member."""

    spec: str  # a file path or package.module:function
    weights: str | None = None  # state dict for a factory teacher
    ensemble_weight: float | None = None


@dataclass
class Teacher:
    name: str
    format: str  # "torch.export" | "torchscript" | "factory"
    sha256: str
    module: torch.nn.Module
    spec: TeacherSpec

    def describe(self, weight: float) -> dict:
        return {
            "name": self.name,
            "format": self.format,
            "sha256": self.sha256,
            "weight": weight,
            "spec": self.spec.spec,
            "weights_file": self.spec.weights,
        }


def fingerprint(spec: TeacherSpec) -> dict:
    """Content hashes of a teacher, without loading it (for the resume check)."""
    if _looks_like_factory(spec.spec):
        return {"spec": spec.spec, "weights_sha256": file_sha256(Path(_existing(spec.weights, "--weights"))) if spec.weights else None}
    return {"spec_sha256": file_sha256(Path(_existing(spec.spec, "--teacher")))}


def load_teacher(spec: TeacherSpec, device: torch.device, trust_checkpoint: bool = False) -> Teacher:
    if _looks_like_factory(spec.spec):
        teacher = _load_factory(spec, trust_checkpoint)
    else:
        path = Path(_existing(spec.spec, "--teacher"))
        if spec.weights:
            raise UserError(f"--weights applies to factory teachers (package.module:function), not to the file {spec.spec!r}")
        if path.suffix == ".pt2":
            teacher = _load_exported(path, spec, trust_checkpoint)
        else:
            teacher = _load_torchscript(path, spec, trust_checkpoint)
    teacher.module = teacher.module.to(device)
    with contextlib.suppress(NotImplementedError, RuntimeError):
        teacher.module.eval()  # exported programs may refuse eval(); they were traced in eval mode
    return teacher


def _looks_like_factory(spec: str) -> bool:
    module, sep, attr = spec.partition(":")
    return bool(sep) and not os.path.exists(spec) and "/" not in module and module.replace(".", "").replace("_", "").isalnum() and attr.isidentifier()


def _existing(path: str | None, flag: str) -> str:
    if not path or not os.path.isfile(path):
        raise UserError(f"{flag} file {path!r} does not exist; check the path")
    return path


def _file_teacher_name(path: Path) -> str:
    """The file's stem, or its folder's name when the stem says nothing
    (every `transferset train` run exports `RUN/student.pt2`)."""
    generic = {"student", "model", "teacher", "program", "module"}
    return f"{path.resolve().parent.name}" if path.stem in generic else path.stem


def _refuse_unsafe(path: Path, problems: list[str]) -> None:
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise UserError(refusal(f"--teacher {str(path)!r}", f"parts that would run code from the file when loaded ({problems[0]}{more})"))


def _load_exported(path: Path, spec: TeacherSpec, trust: bool) -> Teacher:
    not_exported = f"teacher {str(path)!r} is not a torch.export program"
    if not zipfile.is_zipfile(path):  # a .pt2 is a zip archive; anything else fails below, noisily
        raise UserError(f"{not_exported}; export it with torch.export.save, or use TorchScript or a factory")
    if not trust:  # torch.export.load unpickles and evals parts of the archive: look first
        _refuse_unsafe(path, unsafe_export_parts(str(path)))
    export_log = logging.getLogger("torch.export")
    level = export_log.level
    export_log.setLevel(logging.CRITICAL)  # torch logs a traceback before raising; our one line says it all
    try:
        program = torch.export.load(str(path))
    except Exception as error:
        raise UserError(f"{not_exported} ({type(error).__name__}); export it with torch.export.save, or use TorchScript or a factory") from None
    finally:
        export_log.setLevel(level)
    return Teacher(_file_teacher_name(path), "torch.export", file_sha256(path), program.module(), spec)


def _load_torchscript(path: Path, spec: TeacherSpec, trust: bool) -> Teacher:
    if not trust and zipfile.is_zipfile(path):
        _refuse_unsafe(path, unsafe_torchscript_parts(str(path)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise UserError(
            f"teacher {str(path)!r} is not a model transferset can load ({type(error).__name__}); "
            f"give a torch.export .pt2, a TorchScript archive, or package.module:function with --weights"
        ) from None
    return Teacher(_file_teacher_name(path), "torchscript", file_sha256(path), module, spec)


def load_state_dict(path: Path, flag: str, trust: bool) -> object:
    """torch.load with weights_only=True; full unpickling only with --trust-checkpoint.

    A pickle can run any code while it loads. A plain state dict never needs
    that, so anything that does is refused unless the user vouches for it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as error:
        if not needs_full_unpickling(error):
            raise UserError(f"{str(path)!r} is not a checkpoint torch can read (damaged or not a torch file); delete or replace it") from None
        raise UserError(refusal(f"{flag} {str(path)!r}") + " (better: save model.state_dict() instead)") from None
    except Exception as error:
        raise UserError(
            f"{flag} {str(path)!r} is not a state dict torch can load ({type(error).__name__}); "
            f"save it with torch.save(model.state_dict(), path)"
        ) from None


def _load_factory(spec: TeacherSpec, trust: bool) -> Teacher:
    factory = load_callable(spec.spec, "--teacher")
    try:
        module = factory()
    except Exception as error:
        first = first_line(error)
        raise UserError(
            f"--teacher {spec.spec} failed when called ({type(error).__name__}: {first}); a teacher factory is called "
            f"with no arguments and returns the nn.Module (wrap yours in a function that fixes its arguments)"
        ) from None
    if not isinstance(module, torch.nn.Module):
        raise UserError(f"--teacher {spec.spec} returned {type(module).__name__}, not a torch.nn.Module")
    sha = "factory:" + spec.spec
    if spec.weights:
        path = Path(_existing(spec.weights, "--weights"))
        state = load_state_dict(path, "--weights", trust)
        if not isinstance(state, dict):
            raise UserError(f"--weights {str(path)!r} holds a {type(state).__name__}, not a state dict")
        try:
            module.load_state_dict(state)
        except RuntimeError as error:
            first = first_line(error)
            raise UserError(f"--weights {str(path)!r} does not fit --teacher {spec.spec}: {first}") from None
        sha = file_sha256(path)
    name = spec.spec.rpartition(":")[2] + (f"@{Path(spec.weights).stem}" if spec.weights else "")
    return Teacher(name, "factory", sha, module, spec)


def autocast_context(device: torch.device, precision: str):
    """bf16/fp16 autocast for teachers; results are cast to float32 before combining."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    if device.type == "cpu" and dtype is torch.float16:
        raise UserError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_teachers(teachers: list[Teacher], x: torch.Tensor, precision: str) -> torch.Tensor:
    """Member logits [K, B, C] in float32 for one input batch (on x's device)."""
    outs = []
    with torch.inference_mode(), autocast_context(x.device, precision):
        for t in teachers:
            out = t.module(x)
            if isinstance(out, (tuple, list)):
                out = out[0]
            if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != x.shape[0]:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise UserError(f"teacher {t.name!r} returned {shape} for a batch of {x.shape[0]}; a teacher must return logits [batch, classes]")
            outs.append(out.to(torch.float32))
    sizes = {o.shape[1] for o in outs}
    if len(sizes) > 1:
        detail = ", ".join(f"{t.name}={o.shape[1]}" for t, o in zip(teachers, outs))
        raise UserError(f"teachers disagree on the number of classes ({detail}); every ensemble member must predict the same classes")
    return torch.stack(outs)
