"""User-facing errors and the exit codes of the command line.

Anything the user can fix (a malformed suite, an unknown name, missing data or weights, an impossible
privacy budget) raises :class:`UserError`. The CLI prints each of its problems on one line and exits
with code 2, without a traceback. Everything else is a bug: exit 3, with its traceback.
"""

from __future__ import annotations

from typing import Iterable, Union

EXIT_OK = 0
EXIT_CHECK_FAILED = 1  # regress found a regression, selfcheck/audit a failed check, a grid a failed run
EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """An error caused by the user's input. ``problems`` are one-line messages, each naming the fix."""

    exit_code = EXIT_USER_ERROR

    def __init__(self, message: Union[str, Iterable[str]]):
        lines = [message] if isinstance(message, str) else list(message)
        self.problems = [" ".join(str(line).split()) for line in lines]
        super().__init__("\n".join(self.problems))
