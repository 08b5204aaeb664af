"""Exceptions that carry a message meant for the person running a stage.

Every error a user can cause (bad config, bad data, mismatched folds, an invalid submission) is a
:class:`MedalistError`; the command line prints its message without a traceback and exits 2.
"""

from collections.abc import Iterator
from contextlib import contextmanager


def show_value(value) -> str:
    """``repr`` of a cell without numpy's type wrapper (``5``, not ``np.int64(5)``)."""
    item = getattr(value, "item", None)
    return repr(item() if callable(item) and type(value).__module__ == "numpy" else value)


class MedalistError(Exception):
    """An error caused by input the user controls; its message says what and where."""


class ConfigError(MedalistError):
    """A config key is unknown, has the wrong type, or conflicts with another key."""


@contextmanager
def config_errors() -> Iterator[None]:
    """A config section's check (a ``ValueError``, as pydantic's validators raise) run outside
    the config, raised as the :class:`ConfigError` it names."""
    try:
        yield
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


class DataError(MedalistError):
    """A data file, column, row or value is missing or invalid."""


class FoldsMismatchError(MedalistError):
    """The fold file does not match the data a stage was given (leakage guard)."""


class SubmissionError(MedalistError):
    """A submission does not match the sample submission."""


class CheckpointError(MedalistError):
    """A weights or checkpoint file is truncated, unsafe, or belongs to another model."""


class TrainingDivergedError(MedalistError):
    """Too many optimizer steps in a row had a non-finite loss or gradient."""
