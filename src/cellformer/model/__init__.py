"""User-facing models with the scvi-tools API."""

from ._geneformer import GeneformerClassifier
from ._linear import LinearClassifier
from ._pretrain import PretrainedEncoder, pretrain
from ._scgpt import ScGPTClassifier
from ._transformer import CellTransformer
from .base import CellformerModel

__all__ = [
    "CellTransformer",
    "CellformerModel",
    "GeneformerClassifier",
    "LinearClassifier",
    "PretrainedEncoder",
    "ScGPTClassifier",
    "pretrain",
]
