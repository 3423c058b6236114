"""The errors a user sees, and how one is shown: one line that says what to change.

Every room raises `UserError` for bad input (a flag, a file, a folder); the command-line programs catch it and exit
with status 2 after printing `error: <message>`. Nothing here imports another room of the project.
"""


class UserError(Exception):
    """A mistake in the user's input: reported as one line, with a non-zero exit, on every rank."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): libraries raise errors whose
    text runs over many lines, and a user needs the one that says what went wrong."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def described(error: BaseException) -> str:
    """`Type: first line`, for errors whose type says something (a truncated file, a permission)."""
    return f"{type(error).__name__}: {first_line(error)}"
