"""Neural-network building blocks (plain PyTorch: no AnnData, no scvi-tools)."""

from cellformer._utils import moved_names

from . import _dropout, _neighbours, _prune
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
from ._dropout import Dropout
from ._encoder import EncoderBlock, TransformerEncoder
from ._novelty import NoveltyScorer
from ._prune import ffn_importance, head_importance, prune_ffn, prune_heads

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
    "ffn_importance",
    "get_encoder_config",
    "head_importance",
    "kl_divergence",
    "mc_sampling",
    "predictive_summary",
    "prune_ffn",
    "prune_heads",
    "register_attention",
]

#: Helpers ``cf.nn`` listed before 0.2; internal now (they still import, with a warning).
__getattr__ = moved_names(
    "cellformer.nn",
    {
        "bernoulli_keep": (_dropout.bernoulli_keep, None),
        "neighbour_attention": (_neighbours.neighbour_attention, None),
        "slice_linear": (_prune.slice_linear, None),
    },
)
