"""Errors for mistakes a user can fix.

Everything in the project that refuses a user's input raises a ``ContinualError`` subclass, so the
CLI can catch that one type at its boundary and print the message as one red line (exit code 1)
instead of a traceback. A traceback is kept for real bugs, which raise anything else.
"""

from __future__ import annotations

__all__ = ["ContinualError", "ContinualWarning", "Interrupted", "TaskError"]


class ContinualError(Exception):
    """A user's mistake or a refused operation.

    ``str(err)`` is ONE line naming the bad value and the fix. The CLI prints it in red and exits 1
    without a traceback.
    """


class TaskError(ContinualError):
    """A task definition or its data is unusable (bad name, missing file, bad row, ...)."""


class ContinualWarning(RuntimeWarning):
    """Something the user should know that does not stop the job (an index rebuilt, a warm start that
    found no source, a loss spike, overfitting).

    The project's own category, so the CLI can show these as one yellow line each while it silences
    third-party noise; a RuntimeWarning subclass so code that already expects RuntimeWarning still does.
    """


class Interrupted(BaseException):
    """The process was asked to stop (SIGTERM) in the middle of a job.

    A ``BaseException`` (like ``KeyboardInterrupt``) so that no ``except Exception`` on the way swallows
    it: runs end KILLED, nothing is registered, and the CLI exits non-zero with one line saying so.
    Lightning turns SIGTERM into a ``SystemExit(0)``; the CLI installs a handler that raises this instead.
    """

    def __init__(self, signum: int = 15):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
