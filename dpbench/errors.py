"""User-facing errors.

Anything the user can fix (a malformed suite, an unknown name, missing data or weights, an impossible
privacy budget) raises :class:`UserError`. The CLI prints its message on one line and exits with code 2,
without a traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; ``str(err)`` is a one-line message that names the fix."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))
