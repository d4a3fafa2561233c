"""scvi-tools modules: the torch graphs and their losses."""

from ._classifier import ClassifierModuleBase
from ._linear import LinearModule

__all__ = ["ClassifierModuleBase", "LinearModule"]
