"""User-facing models with the scvi-tools API."""

from ._base import CellformerModel
from ._linear import LinearClassifier

__all__ = ["CellformerModel", "LinearClassifier"]
