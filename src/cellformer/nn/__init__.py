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
from ._bayes import BayesianLinear, kl_divergence, mc_sampling, predictive_summary
from ._dropout import Dropout, bernoulli_keep
from ._encoder import EncoderBlock, TransformerEncoder
from ._neighbours import neighbour_attention
from ._novelty import NoveltyScorer
from ._prune import ffn_importance, head_importance, prune_ffn, prune_heads, slice_linear

__all__ = [
    "ATTENTION",
    "BayesianLinear",
    "DenseAttention",
    "Dropout",
    "EncoderBlock",
    "GeneGraph",
    "KnnAttention",
    "MultiHeadAttention",
    "NoveltyScorer",
    "PerformerAttention",
    "TokenNeighbours",
    "TransformerEncoder",
    "bernoulli_keep",
    "ffn_importance",
    "head_importance",
    "kl_divergence",
    "mc_sampling",
    "neighbour_attention",
    "predictive_summary",
    "prune_ffn",
    "prune_heads",
    "slice_linear",
]
