"""Model classes by name and the kinds of published checkpoints, filled as models are defined."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["checkpoint_kinds", "model_class", "register_checkpoint", "register_model"]

#: Model classes by name (every subclass of :class:`CellformerModel` registers itself), so that
#: :meth:`CellformerModel.load` can hand a saved model to the class that saved it.
_MODEL_CLASSES: dict[str, type] = {}
#: ``(detect, model class)`` per kind of published checkpoint that ``from_pretrained`` reads.
_CHECKPOINTS: list[tuple[Callable[[object], bool], type]] = []


def model_class(name: str | None) -> type | None:
    """Return the registered model class called ``name`` (``None`` if there is none)."""
    return _MODEL_CLASSES.get(name) if name else None


def register_checkpoint(detect: Callable[[object], bool], cls: type) -> None:
    """Register a kind of published checkpoint: ``detect(path)`` says whether ``cls`` reads it.

    ``cls.from_pretrained(path, adata, labels_key, layer=, trainable_layers=, **kwargs)`` builds
    the model; :meth:`CellTransformer.from_pretrained` asks every registered kind in turn.
    """
    if all(cls is not known for _, known in _CHECKPOINTS):
        _CHECKPOINTS.append((detect, cls))


def checkpoint_kinds() -> list[tuple[Callable[[object], bool], type]]:
    """Return the registered ``(detect, model class)`` pairs of published checkpoints."""
    return list(_CHECKPOINTS)


def register_model(cls: type) -> None:
    """Register a model class by name (done by :class:`CellformerModel` for every subclass)."""
    _MODEL_CLASSES[cls.__name__] = cls
