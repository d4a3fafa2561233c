"""cellformer: transformer cell-type classifiers for single-cell RNA-seq, done right.

Submodules are imported on first use, so that ``import cellformer`` and ``cellformer --help``
stay fast (PyTorch and scvi-tools load when a model is first touched).
"""

from __future__ import annotations

import importlib
import logging

from ._settings import settings
from ._version import __version__

#: cellformer's error family, importable from the top level
ERRORS = ("CellformerError", "InputError", "OverwriteError", "ParameterError", "UnsafeFileError")

__all__ = [
    *ERRORS,
    "bench",
    "datasets",
    "model",
    "module",
    "nn",
    "pl",
    "pp",
    "settings",
    "tl",
    "tokenizers",
    "train",
]


def _default_logging() -> None:
    """Show cellformer's info lines (gene coverage, early stopping...) like scvi-tools does."""
    logger = logging.getLogger("cellformer")
    if logger.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s cellformer: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


_default_logging()


def __getattr__(name: str):
    if name in ERRORS:
        value = getattr(importlib.import_module("._errors", __name__), name)
        globals()[name] = value
        return value
    if name in __all__:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'cellformer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*__all__, "__version__"])
