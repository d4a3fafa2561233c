"""Tokenizers: how a cell becomes a sequence of tokens.

A tokenizer composes three exchangeable parts (as in the Heimdall framework):

- **F_G**, gene identity: :class:`GeneEncoder` (learned, or vectors from a user table);
- **F_E**, expression: :class:`ExpressionEncoder` (none, quantile bins, log bins, continuous);
- **F_C**, cell constructor: :class:`Tokenizer` (order, drop zeros, truncate, pad, special
  tokens) and :class:`TokenEmbedding` (sum or concatenation, positions).

Expression encoders and token orders are registered parts (:func:`register_expression`,
:func:`register_order`): a new one is a class or a :class:`TokenOrder` and one call.

:class:`RankValueTokenizer` and :class:`ScGPTTokenizer` reproduce Geneformer's and scGPT's own
tokenizers exactly, for their checkpoints.

Presets (:data:`PRESETS`): ``"geneformer"``, ``"scgpt"``, ``"scbert"`` and ``"default"``.
"""

from ._config import PRESETS, TokenizerConfig, get_config
from ._encoders import ExpressionEncoder, GeneEncoder, TokenEmbedding, project_table
from ._orders import ORDER, TokenOrder, register_order
from ._parts import EXPRESSION, ExpressionPart, register_expression
from ._rank_value import RankValueTokenizer
from ._tokenizer import Tokenizer
from ._tokens import N_SPECIAL, SPECIAL_TOKENS, Tokens
from ._value_bins import ScGPTTokenizer

__all__ = [
    "EXPRESSION",
    "N_SPECIAL",
    "ORDER",
    "PRESETS",
    "RankValueTokenizer",
    "ScGPTTokenizer",
    "SPECIAL_TOKENS",
    "ExpressionEncoder",
    "ExpressionPart",
    "GeneEncoder",
    "TokenEmbedding",
    "Tokenizer",
    "TokenOrder",
    "TokenizerConfig",
    "Tokens",
    "get_config",
    "project_table",
    "register_expression",
    "register_order",
]
