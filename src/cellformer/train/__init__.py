"""Lightning training plans, callbacks and streamed data."""

from cellformer._core.lbfgs import C_GRID

from ._callbacks import RestoreBestWeights
from ._data import ChunkedCells
from ._plan import CellTypeTrainingPlan, WarmupCosinePlan
from ._pretrain import PretrainingPlan

__all__ = [
    "C_GRID",
    "CellTypeTrainingPlan",
    "ChunkedCells",
    "PretrainingPlan",
    "RestoreBestWeights",
    "WarmupCosinePlan",
]
