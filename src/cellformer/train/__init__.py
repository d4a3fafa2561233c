"""Lightning training plans."""

from ._plan import ClassifierTrainingPlan

__all__ = ["ClassifierTrainingPlan"]
