"""Neural-network building blocks (plain PyTorch: no AnnData, no scvi-tools)."""

from ._attention import (
    ATTENTION,
    DenseAttention,
    GeneGraph,
    KnnAttention,
    MultiHeadAttention,
    PerformerAttention,
    TokenNeighbours,
)
from ._encoder import EncoderBlock, TransformerEncoder
from ._neighbours import neighbour_attention

__all__ = [
    "ATTENTION",
    "DenseAttention",
    "EncoderBlock",
    "GeneGraph",
    "KnnAttention",
    "MultiHeadAttention",
    "PerformerAttention",
    "TokenNeighbours",
    "TransformerEncoder",
    "neighbour_attention",
]
