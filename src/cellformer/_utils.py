"""Small internal helpers."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import types
import typing
import warnings
from pathlib import Path

import numpy as np

from cellformer._errors import MissingDependencyError, ParameterError


def _is_number(value, kinds) -> bool:
    """Whether ``value`` is a number of ``kinds`` (not a bool; NaN is refused for every float)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, kinds):
        return False
    return not (isinstance(value, (float, np.floating)) and math.isnan(value))


def _matches(value, hint) -> bool:
    """Whether ``value`` fits the type ``hint`` (the subset of hints options use)."""
    origin = typing.get_origin(hint)
    if hint is type(None) or hint is None:
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint is int:
        return _is_number(value, int | np.integer)
    if hint is float:
        return _is_number(value, int | float | np.number)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        item = (typing.get_args(hint) or (object,))[0]
        return isinstance(value, (tuple, list)) and all(
            item is object or _matches(v, item) for v in value
        )
    return True


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    names = {
        bool: "True or False",
        int: "a whole number",
        float: "a number (not NaN)",
        str: "a string",
    }
    if hint in names:
        return names[hint]
    if origin in (tuple, list):
        return "a list of " + _describe((typing.get_args(hint) or (object,))[0]) + "s"
    return getattr(hint, "__name__", str(hint))


def check_types(options: dict, hints: dict, what: str) -> None:
    """Check an options mapping against its schema of type hints, naming the first misfit.

    ``hints``: option name → type hint (``int``, ``float``, ``bool``, ``str``, ``Literal``,
    unions with ``None``, ``tuple[str, ...]``). Unknown names are an error that lists the known
    ones; NaN is refused wherever a number is expected.
    """
    unknown = sorted(set(options) - set(hints))
    if unknown:
        raise ParameterError(f"{what} has unknown option(s) {unknown}; it takes {sorted(hints)}.")
    for name, value in options.items():
        if not _matches(value, hints[name]):
            raise ParameterError(f"{what}: {name} must be {_describe(hints[name])}, got {value!r}.")


def check_dataclass_types(config, what: str) -> None:
    """:func:`check_types` of a dataclass instance against its own field annotations."""
    hints = typing.get_type_hints(type(config))
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    check_types(values, {name: hints[name] for name in values}, what)


def check_positive(required: bool = False, **values) -> None:
    """Refuse counts below 1: an error that names the parameter.

    ``None`` means a default and passes unless ``required``.
    """
    for name, value in values.items():
        if value is None and not required:
            continue
        if not _is_number(value, int | np.integer) or value < 1:
            raise ParameterError(f"{name} must be a whole number of at least 1, got {value!r}.")


def check_probability(closed: bool = False, required: bool = False, **values) -> None:
    """Refuse shares outside ``[0, 1)`` (``[0, 1]`` when ``closed``): an error naming them.

    ``None`` means a default and passes unless ``required``.
    """
    for name, value in values.items():
        if value is None and not required:
            continue
        if not _is_number(value, int | float | np.number) or not (
            0 <= value <= 1 if closed else 0 <= value < 1
        ):
            raise ParameterError(
                f"{name} must be a number in [0, 1{']' if closed else ')'}, got {value!r}."
            )


def check_non_negative(required: bool = False, **values) -> None:
    """Refuse negative numbers: an error that names the parameter (``None`` as above)."""
    for name, value in values.items():
        if value is None and not required:
            continue
        if not _is_number(value, int | float | np.number) or value < 0:
            raise ParameterError(f"{name} must be a non-negative number, got {value!r}.")


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "scvi")


@contextlib.contextmanager
def quiet_training():
    """Silence Lightning's, scvi-tools' and cellformer's per-fit info lines (loops over fits)."""
    loggers = [logging.getLogger(name) for name in (*_LIGHTNING_LOGGERS, "cellformer")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:  # never lower than the user's own setting (cf.settings.verbosity)
        floor = logging.ERROR if lg.name != "cellformer" else logging.WARNING
        lg.setLevel(max(lg.getEffectiveLevel(), floor))
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module="lightning")
            warnings.filterwarnings("ignore", module="scvi")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


#: Lightning and scvi-tools messages that say nothing to a user of one ``train()`` call.
_NOISE = (
    r".*isinstance\(treespec, LeafSpec\).*",
    r".*smaller than the logging interval.*",
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*`training_step` returned `None`.*",
)


@contextlib.contextmanager
def lightning_noise_filtered():
    """Hide Lightning's internal warnings and per-fit info lines, keep real warnings.

    The info lines ("GPU available: False", "Loading `train_dataloader` to estimate number of
    stepping batches", tips) and deprecation warnings from inside Lightning are not the user's to
    act on; cellformer logs what matters (early stopping, the epoch kept) itself.
    """
    loggers = [logging.getLogger(name) for name in _LIGHTNING_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.level, logging.WARNING))
    try:
        with warnings.catch_warnings():
            for pattern in _NOISE:
                warnings.filterwarnings("ignore", message=pattern)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def preserved_random_state():
    """Restore Python's, NumPy's and torch's global random state on exit.

    For a nested, seeded fit (e.g. a baseline inside a model's ``train``) that must not shift the
    random stream of the outer fit.
    """
    import random

    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


@contextlib.contextmanager
def seeded(seed: int | None):
    """Seed Python's, NumPy's and torch's random streams inside, restore the caller's on exit.

    What ``lightning.seed_everything`` does for a run, without resetting the user's global random
    state for good: ``train(seed=0)`` is reproducible and leaves the caller's stream where it
    was. ``None``: nothing is seeded or restored (the run draws from the global state).
    """
    if seed is None:
        yield
        return
    import random

    import numpy as np
    import torch

    with preserved_random_state():
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)  # CUDA generators too
        yield


def subsample(indices, max_n: int, seed: int | None):
    """Return ``indices`` when at most ``max_n``, else a sorted seeded sample of ``max_n`` of them.

    One rule for every statistic fit on "at most N training cells" (without replacement).
    """
    import numpy as np

    indices = np.asarray(indices)
    if len(indices) <= max_n:
        return indices
    return np.sort(np.random.default_rng(seed).choice(indices, max_n, replace=False))


def epochs_for_steps(steps: int, n_cells: int, batch_size: int) -> int:
    """Epochs that make at least ``steps`` optimiser steps over ``n_cells`` in batches."""
    steps_per_epoch = max(-(-n_cells // batch_size), 1)
    return -(-steps // steps_per_epoch)


def freeze_all_but_last(embedding, blocks, trainable: int | None) -> None:
    """Freeze ``embedding`` and all but the last ``trainable`` of ``blocks`` (``None``: nothing).

    The fine-tuning rule of pretrained encoders (scBERT's, Geneformer's, cellformer's own).
    """
    if trainable is not None and not 0 <= trainable <= len(blocks):
        raise ParameterError(f"trainable_layers must be in [0, {len(blocks)}], got {trainable}.")
    if trainable is None:
        return
    embedding.requires_grad_(False)
    for block in list(blocks)[: len(blocks) - trainable]:
        block.requires_grad_(False)


def import_transformers():
    """Import ``transformers`` or say how to install it."""
    try:
        import transformers
    except ImportError as err:
        raise MissingDependencyError(
            "Geneformer checkpoints need the optional dependency 'transformers': "
            "pip install 'cellformer[foundation]'."
        ) from err
    return transformers


def is_celltypist_file(path) -> bool:
    """Whether ``path`` names a CellTypist model file (a ``.pkl``, or ``.pickle``)."""
    return isinstance(path, (str, Path)) and str(path).lower().endswith((".pkl", ".pickle"))


def moved_names(package: str, moved: dict[str, tuple[object, str | None]]):
    """Return a module ``__getattr__`` for names a package no longer exports.

    ``moved``: ``{name: (object, replacement)}``; reading ``package.name`` gives the object with
    a :class:`FutureWarning` naming the replacement (``None``: the name is internal now).
    """

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value, where = moved[name]
        hint = f"use {where}" if where else "it is internal and may change without notice"
        warnings.warn(
            f"{package}.{name} is no longer public API: {hint}.", FutureWarning, stacklevel=2
        )
        return value

    return __getattr__
