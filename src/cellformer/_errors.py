"""cellformer's error family: catch :class:`CellformerError` to catch every error it raises on purpose."""

from __future__ import annotations

__all__ = [
    "CellformerError",
    "InputError",
    "MissingDependencyError",
    "MissingFileError",
    "MissingKeyError",
    "OverwriteError",
    "ParameterError",
    "UnsafeFileError",
]


class CellformerError(Exception):
    """Base of the errors cellformer raises on purpose (catch it to catch them all)."""


class InputError(CellformerError, ValueError):
    """The input data cannot be used as given; the message says why and how to fix it."""


class ParameterError(InputError):
    """A parameter is out of its range; the message names it and the valid values."""


class OverwriteError(CellformerError, FileExistsError):
    """Something already exists where cellformer would write; the message names the way out."""


class UnsafeFileError(InputError):
    """A model file would run code to be read: refused (``trust=True`` reads files you trust)."""


class MissingKeyError(InputError, KeyError):
    """A name that is not there (a model, a column, a registry entry); also a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return str(self.args[0]) if self.args else ""


class MissingFileError(InputError, FileNotFoundError):
    """A file that is not there; also a ``FileNotFoundError``."""


class MissingDependencyError(CellformerError, ImportError):
    """An optional dependency a feature needs is not installed; the message says what to install."""
