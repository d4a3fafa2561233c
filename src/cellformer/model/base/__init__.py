"""What every cellformer model shares: the scvi-tools-style base class and its parts.

:class:`CellformerModel` is assembled from parts kept beside it, one file each: registering data
(:mod:`._setup`), inference and the ``obs``/``obsm`` outputs (:mod:`._inference`,
:mod:`._outputs`), calibration after training (:mod:`._calibration`), Cell Ontology answers
(:mod:`._ontology`), learning from unlabelled cells (:mod:`._adapt`), saving and model cards
(:mod:`._saved`, :mod:`._hub`), majority voting (:mod:`._voting`). Nothing here imports a
concrete model; concrete models (``model/_linear.py``, ``model/_transformer.py`` ...) subclass
:class:`CellformerModel` and register themselves by name for :meth:`CellformerModel.load`.
"""

from ._hub import HF_PREFIX, pull_from_hub
from ._model import CellformerModel
from ._ontology import coarse_answers
from ._registry import checkpoint_kinds, model_class, register_checkpoint
from ._saved import check_saved_model, holds_saved_model, saved_model_name
from ._voting import majority_vote, over_cluster

__all__ = [
    "HF_PREFIX",
    "CellformerModel",
    "checkpoint_kinds",
    "check_saved_model",
    "holds_saved_model",
    "coarse_answers",
    "majority_vote",
    "model_class",
    "over_cluster",
    "pull_from_hub",
    "register_checkpoint",
    "saved_model_name",
]
