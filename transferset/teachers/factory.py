"""Factory teachers: `package.module:function`, called with no arguments, returning
the nn.Module; optionally `--weights state_dict.pt`, loaded with weights_only=True
(a teacher file is data, never code we unpickle, unless --trust-checkpoint).

The fingerprint covers the factory's code as well as its weights: the source file
of its module, hashed without importing it, so that a factory edited between a
kill and the rerun is a different configuration, not a silent mix of two teachers.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from transferset.errors import UserError, first_line
from transferset.inputs import load_callable
from transferset.io import file_sha256
from transferset.teachers import Teacher, TeacherSpec, register
from transferset.teachers.files import existing
from transferset.trust import safe_load


class FactoryLoader:
    kind = "factory"

    def recognises(self, target: str) -> bool:
        module, sep, attr = target.partition(":")
        return (bool(sep) and not os.path.exists(target) and "/" not in module
                and module.replace(".", "").replace("_", "").isalnum() and attr.isidentifier())

    def fingerprint(self, target: str, spec: TeacherSpec) -> dict:
        weights = file_sha256(existing(spec.weights, "--weights")) if spec.weights else None
        return {"spec": target, "weights_sha256": weights, "code_sha256": _module_source_sha256(target)}

    def load(self, target: str, spec: TeacherSpec, trust: bool) -> Teacher:
        factory = load_callable(target, "--teacher")
        try:
            module = factory()
        except Exception as error:
            raise UserError(
                f"--teacher {target} failed when called ({type(error).__name__}: {first_line(error)}); a teacher factory is called "
                f"with no arguments and returns the nn.Module (wrap yours in a function that fixes its arguments)"
            ) from None
        if not isinstance(module, torch.nn.Module):
            raise UserError(f"--teacher {target} returned {type(module).__name__}, not a torch.nn.Module")
        sha = "factory:" + target
        if spec.weights:
            path = existing(spec.weights, "--weights")
            _load_weights(module, path, target, trust)
            sha = file_sha256(path)
        name = target.rpartition(":")[2] + (f"@{Path(spec.weights).stem}" if spec.weights else "")
        return Teacher(name, "factory", sha, module, spec)


def load_state_dict(path: Path, flag: str, trust: bool) -> object:
    """A state dict, loaded with weights_only=True unless --trust-checkpoint
    (a pickle can run any code while it loads; a plain state dict never needs that)."""
    return safe_load(
        path, what=f"{flag} {str(path)!r}", trust=trust, refusal_hint=" (better: save model.state_dict() instead)",
        unreadable=lambda error: f"{flag} {str(path)!r} is not a state dict torch can load ({type(error).__name__}); "
        f"save it with torch.save(model.state_dict(), path)",
    )


def _load_weights(module: torch.nn.Module, path: Path, target: str, trust: bool) -> None:
    state = load_state_dict(path, "--weights", trust)
    if not isinstance(state, dict):
        raise UserError(f"--weights {str(path)!r} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise UserError(f"--weights {str(path)!r} does not fit --teacher {target}: {first_line(error)}") from None


def _module_source_sha256(target: str) -> str | None:
    """sha256 of the factory module's source file (None when it has none, e.g. a builtin)."""
    try:
        found = importlib.util.find_spec(target.partition(":")[0])
    except (ImportError, ValueError):
        return None  # the load reports a missing module with its own message
    origin = getattr(found, "origin", None)
    return file_sha256(Path(origin)) if origin and os.path.isfile(origin) else None


register(FactoryLoader())
