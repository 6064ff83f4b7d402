"""Errors a user can fix. The CLI prints them as one line and exits with code 2, no traceback.

Anything that is not a `UserError` is a bug in budgetlora and keeps its traceback.
"""

from __future__ import annotations

from typing import Iterable, Optional


class UserError(Exception):
    """Bad input or a refused request: the message says what is wrong and what to do."""

    exit_code = 2


class ConfigError(UserError):
    """An unknown, mistyped or out-of-range setting."""


class DataError(UserError):
    """A data file that is missing, unreadable or malformed."""


class BudgetError(UserError):
    """A configuration with too many trainable parameters."""


class ModelLoadError(UserError):
    """A model that cannot be found, downloaded or loaded safely."""


class RunDirError(UserError):
    """An output folder that cannot be used (finished run, locked, unwritable)."""


class ExportError(UserError):
    """An export that does not reproduce the run's predictions, or cannot be uploaded."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class TrainingInterrupted(UserError):
    """SIGINT/SIGTERM: a checkpoint was saved and the run can be resumed."""

    exit_code = 130


class StorageError(UserError):
    """A study database (`search --storage`) that cannot be reached."""


def closest_match(word: str, known: Iterable[str]) -> Optional[str]:
    """The known name closest to a mistyped one, for a 'did you mean' hint; None when none is close."""
    import difflib

    close = difflib.get_close_matches(word, sorted(known), n=1)
    return close[0] if close else None
