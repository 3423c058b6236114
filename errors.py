"""The errors a user sees, and how one is shown: one line that says what to change.

Every room raises `UserError` for bad input (a flag, a file, a folder); the command-line programs catch it and exit
with status 2 after printing `error: <message>`. Nothing here imports another room of the project.

The exit statuses of train.py, so that job controllers (Slurm requeue scripts, Kubernetes) tell the outcomes apart:
0 finished, 1 crashed (a traceback), 2 refused its input (one `error:` line), 128 + N stopped by signal N after
committing a checkpoint (143 for SIGTERM, 130 for SIGINT: what shells, Slurm and Kubernetes already report for a
process those signals end, so scripts that requeue on 143 work as they are).
"""

import signal

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A mistake in the user's input: reported as one line, once per job, with exit status 2 on every rank."""


def stopped_exit(signum: int) -> int:
    """The exit status of a run stopped by signal `signum` once its checkpoint is committed: 128 + the number."""
    return 128 + signal.Signals(signum).value


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): libraries raise errors whose
    text runs over many lines, and a user needs the one that says what went wrong."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def described(error: BaseException) -> str:
    """`Type: first line`, for errors whose type says something (a truncated file, a permission)."""
    return f"{type(error).__name__}: {first_line(error)}"
