"""Neural-network building blocks (plain PyTorch: no AnnData, no scvi-tools)."""

from ._attention import ATTENTION, DenseAttention, MultiHeadAttention
from ._encoder import EncoderBlock, TransformerEncoder

__all__ = [
    "ATTENTION",
    "DenseAttention",
    "EncoderBlock",
    "MultiHeadAttention",
    "TransformerEncoder",
]
