"""scvi-tools modules: the torch graphs and their losses."""

from ._bert import BertModule
from ._classifier import ClassifierModuleBase
from ._linear import LinearModule
from ._pretrain import MaskedExpressionModule, mask_tokens
from ._scgpt import ScGPTModule
from ._transformer import TransformerModule

__all__ = [
    "BertModule",
    "ClassifierModuleBase",
    "LinearModule",
    "MaskedExpressionModule",
    "ScGPTModule",
    "TransformerModule",
    "mask_tokens",
]
