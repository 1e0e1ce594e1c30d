"""What we unpickle, and when: nothing that the user did not vouch for.

Every torch file we read (teacher `--weights`, training checkpoints, a run's
`student.pt`) loads through `safe_load`: `weights_only=True`, which allows tensors
and plain containers only. A file that needs more is a pickle that may run code
while it loads; it is refused with a message that names `--trust-checkpoint`, the
one way to allow it. Teacher archives (`.pt2`, TorchScript) are checked before
loading by `transferset.teachers.archives`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable

from transferset.errors import UserError


def needs_full_unpickling(error: pickle.UnpicklingError) -> bool:
    """torch refused a class the file names (a real pickle of Python objects), as
    opposed to bytes that are not a torch file at all (both raise UnpicklingError)."""
    return "Unsupported global" in str(error)


def refusal(what: str, holds: str = "pickled Python objects that only load by running code from the file") -> str:
    return f"{what} holds {holds}; if you trust where it came from, pass --trust-checkpoint"


def safe_load(path: Path, *, what: str, unreadable: Callable[[BaseException], str], trust: bool | None = False,
              refusal_hint: str = "", map_location: Any = "cpu") -> Any:
    """`torch.load(path)` with weights_only unless `trust`; every failure is one UserError.

    `what` names the file in the refusal ("checkpoint '...'"); `unreadable(error)`
    is the message for a file torch cannot load for any other reason. `trust=None`
    means the command has no --trust-checkpoint: a pickle is then just unreadable.
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=not trust)
    except pickle.UnpicklingError as error:
        if trust is None:
            raise UserError(unreadable(error)) from None
        if not needs_full_unpickling(error):
            raise UserError(f"{str(path)!r} is not a checkpoint torch can read (damaged or not a torch file); delete or replace it") from None
        raise UserError(refusal(what) + refusal_hint) from None
    except Exception as error:  # unpickling errors come in many types
        raise UserError(unreadable(error)) from None
