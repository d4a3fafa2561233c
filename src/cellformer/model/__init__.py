"""User-facing models with the scvi-tools API."""

from ._base import CellformerModel
from ._linear import LinearClassifier
from ._transformer import CellTransformer

__all__ = ["CellTransformer", "CellformerModel", "LinearClassifier"]
