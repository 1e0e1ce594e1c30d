"""The one exception type that the CLI turns into a one-line message and exit code 2.

Raise `UserError` for anything the user can fix (a bad flag, a missing file, data
that does not match what they told us). The message must say what is wrong *and*
how to fix it. Anything else that escapes is a bug in transferset: the CLI prints
a one-line summary and suggests `--debug` for the traceback.
"""


class UserError(Exception):
    """Bad input: reported as `transferset: error: <message>` with exit code 2."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none),
    for one-line errors that quote a library's complaint."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
