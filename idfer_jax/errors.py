"""The one root of every error a user can cause.

Any exception that derives from `UserError` is the user's input, files or environment, not a bug: its
message says what is wrong and how to fix it, and `idfer` prints it as one line (`idfer: error: ...`,
exit 1) instead of a traceback. A new kind of user error subclasses it (keeping a builtin base such as
ValueError where callers catch that), so the CLI never needs to learn its name.
"""

from __future__ import annotations

import errno
import os
import re


class UserError(Exception):
    """An error caused by the user's input, files or environment; the message says how to fix it."""

    exit_code = 1  # what `idfer` exits with


class Interrupted(UserError):
    """The user stopped the run (Ctrl-C); the message says where the same command resumes from."""

    exit_code = 130  # the shell's code for a process ended by SIGINT


# tensorstore (orbax's writer) and array_record (TFDS's) report a failed write as a ValueError or
# RuntimeError whose text carries the errno, never as an OSError.
_OS_ERROR_CODE = re.compile(r"os_error_code=\\?'?(\d+)")
_STRERRORS = {os.strerror(code): code for code in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES)}


def os_error_in(exc: BaseException | None) -> OSError | None:
    """The OSError behind `exc`: `exc` itself, one in its cause/context chain, or one rebuilt from the
    errno that a tensorstore / array_record error names in its text ("... No space left on device
    [os_error_code='28']"). None when the chain holds none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            return exc
        text = str(exc)
        match = _OS_ERROR_CODE.search(text)
        if match:
            code = int(match.group(1))
            return OSError(code, os.strerror(code))
        for reason, code in _STRERRORS.items():
            if reason in text:
                return OSError(code, reason)
        exc = exc.__cause__ or exc.__context__
    return None
