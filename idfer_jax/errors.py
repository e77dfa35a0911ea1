"""The one root of every error a user can cause.

Any exception that derives from `UserError` is the user's input, files or environment, not a bug: its
message says what is wrong and how to fix it, and `idfer` prints it as one line (`idfer: error: ...`,
exit 1) instead of a traceback. A new kind of user error subclasses it (keeping a builtin base such as
ValueError where callers catch that), so the CLI never needs to learn its name.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input, files or environment; the message says how to fix it."""

    exit_code = 1  # what `idfer` exits with


class Interrupted(UserError):
    """The user stopped the run (Ctrl-C); the message says where the same command resumes from."""

    exit_code = 130  # the shell's code for a process ended by SIGINT
