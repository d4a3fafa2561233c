"""Model classes by name and the kinds of published checkpoints, filled as models are defined."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "CheckpointKind",
    "checkpoint_kinds",
    "model_class",
    "register_checkpoint",
    "register_model",
]


class CheckpointKind(NamedTuple):
    """A kind of published checkpoint that ``CellTransformer.from_pretrained`` reads."""

    #: ``detect(path)``: whether ``path`` may be such a checkpoint
    detect: Callable[[object], bool]
    #: the model class it becomes
    cls: type
    #: what its files are, for messages ("a Geneformer checkpoint (config.json ...)")
    files: str
    #: ``build(cls, path, adata, labels_key, **options)`` returns the model, or ``None`` when
    #: the file is not of this kind after all; ``None``: ``cls.from_pretrained``
    build: Callable | None = None


#: Model classes by name (every subclass of :class:`CellformerModel` registers itself), so that
#: :meth:`CellformerModel.load` can hand a saved model to the class that saved it.
_MODEL_CLASSES: dict[str, type] = {}
#: The kinds of published checkpoint that ``from_pretrained`` reads, in the order it asks them.
_CHECKPOINTS: list[CheckpointKind] = []


def model_class(name: str | None) -> type | None:
    """Return the registered model class called ``name`` (``None`` if there is none)."""
    return _MODEL_CLASSES.get(name) if name else None


def register_checkpoint(
    detect: Callable[[object], bool], cls: type, files: str = "", build: Callable | None = None
) -> None:
    """Register a kind of published checkpoint: ``detect(path)`` says whether ``cls`` reads it.

    ``build(cls, path, adata, labels_key, layer=, trainable_layers=, layerwise_lr_decay=,
    trust=, **kwargs)`` builds the model (``None``: ``cls.from_pretrained(path, adata,
    labels_key, layer=, trainable_layers=, **kwargs)``); ``files`` says what such a checkpoint
    is, for the message that lists the kinds cellformer reads.
    :meth:`CellTransformer.from_pretrained` asks every registered kind in turn.
    """
    if all(cls is not kind.cls for kind in _CHECKPOINTS):
        _CHECKPOINTS.append(CheckpointKind(detect, cls, files or cls.__name__, build))


def checkpoint_kinds() -> list[CheckpointKind]:
    """Return the registered kinds of published checkpoints, in the order they are asked."""
    return list(_CHECKPOINTS)


def register_model(cls: type) -> None:
    """Register a model class by name (done by :class:`CellformerModel` for every subclass)."""
    _MODEL_CLASSES[cls.__name__] = cls
