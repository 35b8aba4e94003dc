"""Errors that describe a user's mistake: the CLI prints their message alone, without a traceback.

Every such error derives from :class:`UserError`. Some also derive from the built-in type they were before this
hierarchy existed (``ValueError``, ``RuntimeError``), so that code catching those keeps working. This module
imports nothing from openjepa: every floor of the package can raise these errors.
"""

from __future__ import annotations


class UserError(Exception):
    """Base class for problems the user can fix (bad path, bad setting, unreadable file...)."""


class DataError(UserError):
    """The dataset cannot be used as given (missing, empty, too small, wrong format)."""


class ConfigError(UserError, ValueError):
    """A configuration key or value is wrong; the message says which and how to fix it."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint could not be written or read; the message says why and what to do."""


class MaskSamplingError(UserError, ValueError):
    """The mask settings cannot be satisfied for this grid."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (no traceback needed)."""
    return (UserError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)
