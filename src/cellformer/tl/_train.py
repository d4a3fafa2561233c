"""Training a model of a named kind on a prepared reference (``tl.annotate``, the CLI)."""

from __future__ import annotations

import logging

from cellformer import _core

__all__ = ["MODEL_KINDS", "auto_choice", "model_class_of", "train_on_reference"]

logger = logging.getLogger("cellformer")

#: Model kinds ``tl.annotate`` trains (``transformer:PRESET`` too).
MODEL_KINDS = ("linear", "transformer", "auto")


def model_class_of(kind: str):
    """Model class and tokenizer preset of a model kind (``linear``, ``transformer[:PRESET]``)."""
    from cellformer.model import CellTransformer, LinearClassifier

    base, _, preset = str(kind).partition(":")
    if base == "linear" and not preset:
        return LinearClassifier, None
    if base == "auto" and not preset:  # the transformer; its guard may choose the linear model
        return CellTransformer, "default"
    if base == "transformer":
        from cellformer.tokenizers import PRESETS

        if preset and preset not in PRESETS:
            raise _core.InputError(
                f"Unknown tokenizer preset {preset!r} in model={kind!r}; use one of "
                f"{', '.join(sorted(PRESETS))}."
            )
        return CellTransformer, preset or "default"
    raise _core.InputError(
        f"model={kind!r}: use 'linear', 'transformer', 'transformer:PRESET', 'auto' or the "
        "directory of a saved model."
    )


def train_on_reference(
    train_on, setup: dict, kind, max_epochs, reject_unknown: bool, seed, progress: bool, adapt_to
):
    """Set up (``setup``: ``setup_anndata``'s arguments) and train a ``kind`` model on ``train_on``.

    ``adapt_to``: ``(query, layer, library_size_key)`` of the query to adapt to, or ``None``.
    """
    cls, preset = model_class_of(kind)
    cls.setup_anndata(train_on, **setup)
    trained = cls(train_on) if preset is None else cls(train_on, tokenizer=preset)
    train_kwargs: dict = {"enable_progress_bar": progress, "seed": seed}
    if max_epochs is not None:
        train_kwargs["max_epochs"] = max_epochs
    if reject_unknown and preset is None:
        train_kwargs["validation_size"] = 0.1  # the thresholds are set on validation cells
    if adapt_to is not None:  # the reference and the query's cells, pseudo-labelled
        query, layer, key = adapt_to
        train_kwargs["unlabeled"] = query
        train_kwargs["adapt_options"] = {"layer": layer, "library_size_key": key}
    logger.info("Training %s on %d reference cells.", type(trained).__name__, train_on.n_obs)
    trained.train(**train_kwargs)
    return trained


def auto_choice(transformer, seed, progress: bool, reject_unknown: bool):
    """``model="auto"``: the transformer, or the linear model where its guard dropped the head.

    A transformer whose head is zero predicts as its linear path, which is refit exactly as
    :class:`~cellformer.model.LinearClassifier` is; that model annotates instead (no encoder
    pass over the query). Returns the model and the guard's record.
    """
    from cellformer.model import LinearClassifier

    choice = dict(transformer.path_choice_ or {"chosen": "linear path + transformer head"})
    if choice["chosen"] != "linear path alone":
        logger.info("model='auto': the transformer annotates (its head beat its linear path).")
        choice["model"] = type(transformer).__name__
        return transformer, choice
    reference = transformer.adata
    setup = transformer._setup_args
    LinearClassifier.setup_anndata(
        reference,
        labels_key=setup["labels_key"],
        layer=setup.get("layer"),
        library_size_key=setup.get("library_size_key"),
    )
    linear = LinearClassifier(reference)
    # as model="linear" trains (validation cells only for the Unknown thresholds)
    linear.train(
        seed=seed, enable_progress_bar=progress, validation_size=0.1 if reject_unknown else 0.0
    )
    logger.info(
        "model='auto': the linear model annotates (the transformer's head did not beat its linear "
        "path on %d held-out reference cells: macro-F1 %.4f against %.4f).",
        choice.get("validation_cells", 0),
        choice.get("macro_f1_with_head", float("nan")),
        choice.get("macro_f1_linear_path", float("nan")),
    )
    choice["model"] = type(linear).__name__
    return linear, choice
