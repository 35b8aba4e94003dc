"""Errors that describe a user's mistake: the CLI prints their message alone, without a traceback."""

from __future__ import annotations


class UserError(Exception):
    """Base class for problems the user can fix (bad path, bad setting, unreadable file...)."""


class DataError(UserError):
    """The dataset cannot be used as given (missing, empty, too small, wrong format)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """Exception types whose message is enough for the user (no traceback needed)."""
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .masks import MaskSamplingError

    return (UserError, ConfigError, CheckpointError, MaskSamplingError, FileNotFoundError, NotADirectoryError,
            IsADirectoryError, PermissionError)
