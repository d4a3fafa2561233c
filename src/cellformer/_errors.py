"""cellformer's error family: catch :class:`CellformerError` to catch every error it raises on purpose."""

from __future__ import annotations

__all__ = ["CellformerError", "InputError", "OverwriteError", "ParameterError", "UnsafeFileError"]


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
