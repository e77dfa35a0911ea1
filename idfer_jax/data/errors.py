"""Errors a user can cause with their data or data config; each message says how to fix it."""

from idfer_jax.errors import UserError


class DataError(UserError, ValueError):
    """A problem with the user's data or data config; the message says how to fix it."""


class ManualDataError(DataError):
    """A manual download is missing or malformed; the message says what to put where."""
