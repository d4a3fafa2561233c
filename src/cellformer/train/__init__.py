"""Lightning training plans and callbacks."""

from ._callbacks import RestoreBestWeights
from ._plan import ClassifierTrainingPlan

__all__ = ["ClassifierTrainingPlan", "RestoreBestWeights"]
