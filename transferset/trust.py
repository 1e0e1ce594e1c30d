"""What we unpickle, and when: nothing that the user did not vouch for.

Every torch file we read (teacher `--weights`, training checkpoints) loads with
`weights_only=True`, which allows tensors and plain containers only. A file that
needs more is a pickle that may run code while it loads; it is refused with a
message that names `--trust-checkpoint`, the one way to allow it.
"""

from __future__ import annotations

import pickle


def needs_full_unpickling(error: pickle.UnpicklingError) -> bool:
    """torch refused a class the file names (a real pickle of Python objects), as
    opposed to bytes that are not a torch file at all (both raise UnpicklingError)."""
    return "Unsupported global" in str(error)


def refusal(what: str, holds: str = "pickled Python objects that only load by running code from the file") -> str:
    return f"{what} holds {holds}; if you trust where it came from, pass --trust-checkpoint"
