"""Neural-network building blocks (plain PyTorch: no AnnData, no scvi-tools)."""

from ._attention import (
    ATTENTION,
    DenseAttention,
    GeneGraph,
    KnnAttention,
    MultiHeadAttention,
    PerformerAttention,
    TokenNeighbours,
    register_attention,
)
from ._bayes import BayesianLinear, kl_divergence, mc_sampling, predictive_summary
from ._config import ENCODER_FIELDS, ENCODER_PRESETS, EncoderConfig, get_encoder_config
from ._dropout import Dropout, bernoulli_keep
from ._encoder import EncoderBlock, TransformerEncoder
from ._neighbours import neighbour_attention
from ._novelty import NoveltyScorer
from ._prune import ffn_importance, head_importance, prune_ffn, prune_heads, slice_linear

__all__ = [
    "ATTENTION",
    "ENCODER_FIELDS",
    "ENCODER_PRESETS",
    "BayesianLinear",
    "DenseAttention",
    "Dropout",
    "EncoderBlock",
    "EncoderConfig",
    "GeneGraph",
    "KnnAttention",
    "MultiHeadAttention",
    "NoveltyScorer",
    "PerformerAttention",
    "TokenNeighbours",
    "TransformerEncoder",
    "bernoulli_keep",
    "ffn_importance",
    "get_encoder_config",
    "head_importance",
    "kl_divergence",
    "mc_sampling",
    "neighbour_attention",
    "predictive_summary",
    "prune_ffn",
    "prune_heads",
    "register_attention",
    "slice_linear",
]
