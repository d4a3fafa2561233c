"""Train/test splits for benchmarks: k-fold × seeds, a predefined column, leave one group out."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import anndata as ad
import numpy as np
from sklearn import model_selection

from cellformer import _core
from cellformer._errors import ParameterError

__all__ = [
    "Fold",
    "StratifiedKFold",
    "LeaveOneGroupOut",
    "PredefinedSplit",
    "make_split",
    "subsample_training",
]

logger = logging.getLogger("cellformer")


@dataclass
class Fold:
    """One train/test split.

    Attributes
    ----------
    name
        Identifier used in results (``"seed0/fold2"``, ``"test"``, ``"donor=D1"``).
    train
        Sorted indices of training cells.
    test
        Sorted indices of test cells whose cell type occurs in training (the scored cells).
    novel
        Sorted indices of test cells whose cell type never occurs in training (reported, not
        scored for accuracy: no model could name them).
    seed
        Seed used for the models on this split.
    """

    name: str
    train: np.ndarray
    test: np.ndarray
    novel: np.ndarray = field(default_factory=lambda: np.array([], dtype=int))
    seed: int = 0

    def __post_init__(self):
        self.train = np.sort(np.asarray(self.train, dtype=int))
        self.test = np.sort(np.asarray(self.test, dtype=int))
        self.novel = np.sort(np.asarray(self.novel, dtype=int))
        if np.intersect1d(self.train, np.concatenate([self.test, self.novel])).size:
            raise ParameterError(f"Split {self.name!r} has cells in both train and test.")


def _with_novel(name: str, train, test, y: np.ndarray, seed: int) -> Fold:
    """Build a fold, setting apart test cells of types absent from training as novel."""
    seen = set(y[train])
    test = np.asarray(test, dtype=int)
    known = np.array([label in seen for label in y[test]], dtype=bool)
    return Fold(name, train, test[known], test[~known], seed)


class StratifiedKFold:
    """Stratified k-fold cross-validation, repeated over seeds (scikit-learn's folds).

    Parameters
    ----------
    n_folds
        Number of folds.
    seeds
        One repetition per seed (the seed shuffles the folds and seeds the models).
    only
        Run only these folds (indices; all by default): the same folds as a full run, for
        models too slow to run on all of them.
    """

    def __init__(
        self, n_folds: int = 5, seeds: int | Sequence[int] = 0, only: Sequence[int] | None = None
    ):
        if n_folds < 2:
            raise ParameterError(f"n_folds must be at least 2, got {n_folds}.")
        self.n_folds = n_folds
        self.seeds = [seeds] if isinstance(seeds, int | np.integer) else list(seeds)
        self.only = None if only is None else sorted({int(i) for i in only})
        if self.only is not None and not all(0 <= i < n_folds for i in self.only):
            raise ParameterError(f"only must hold fold indices in [0, {n_folds}), got {only}.")

    def __repr__(self) -> str:
        only = "" if self.only is None else f", only={self.only}"
        return f"StratifiedKFold(n_folds={self.n_folds}, seeds={self.seeds}{only})"

    def describe(self) -> str:
        """One line for reports."""
        seeds = ", ".join(map(str, self.seeds))
        text = f"stratified {self.n_folds}-fold cross-validation (seed {seeds})"
        if self.only is not None:
            text += f", folds {', '.join(map(str, self.only))} only"
        return text

    def split(self, adata: ad.AnnData, labels_key: str) -> Iterator[Fold]:
        """Yield the folds of ``adata`` stratified by ``obs[labels_key]``."""
        y = adata.obs[labels_key].astype(str).to_numpy()
        _, counts = np.unique(y, return_counts=True)
        if counts.min() < self.n_folds:
            logger.warning(
                "The smallest cell type has %d cells, fewer than n_folds=%d: some test folds "
                "miss it.",
                counts.min(),
                self.n_folds,
            )
        for seed in self.seeds:
            folds = model_selection.StratifiedKFold(
                n_splits=self.n_folds, shuffle=True, random_state=seed
            )
            for i, (train, test) in enumerate(folds.split(np.zeros(len(y)), y)):
                if self.only is not None and i not in self.only:
                    continue
                name = f"fold{i}" if len(self.seeds) == 1 else f"seed{seed}/fold{i}"
                yield _with_novel(name, train, test, y, seed)


class PredefinedSplit:
    """The split written in a column of ``obs`` (e.g. ``obs["split"]`` with train/val/test).

    Parameters
    ----------
    key
        The ``obs`` column.
    train
        Value(s) marking training cells; validation values (``val``) are added to training, as
        the models hold out their own validation cells.
    test
        Value(s) marking test cells. Other cells are unused.
    val
        Value(s) marking validation cells.
    seed
        Seed of the models.
    """

    def __init__(
        self,
        key: str = "split",
        train: str | Sequence[str] = "train",
        test: str | Sequence[str] = "test",
        val: str | Sequence[str] = ("val", "valid", "validation"),
        seed: int = 0,
    ):
        self.key = key
        self.train = {train} if isinstance(train, str) else set(train)
        self.test = {test} if isinstance(test, str) else set(test)
        self.val = {val} if isinstance(val, str) else set(val)
        self.seed = seed

    def __repr__(self) -> str:
        return f"PredefinedSplit(key={self.key!r})"

    def describe(self) -> str:
        """One line for reports."""
        return f"predefined split in obs[{self.key!r}] (train {sorted(self.train)}, test {sorted(self.test)})"

    def split(self, adata: ad.AnnData, labels_key: str) -> Iterator[Fold]:
        """Yield the single predefined fold."""
        values = _column(adata, self.key).astype(str).to_numpy()
        train = np.flatnonzero(np.isin(values, list(self.train | self.val)))
        test = np.flatnonzero(np.isin(values, list(self.test)))
        if len(train) == 0 or len(test) == 0:
            raise _core.InputError(
                f"obs[{self.key!r}] must mark training cells ({sorted(self.train)}) and test "
                f"cells ({sorted(self.test)}); it holds {sorted(set(values))[:10]}."
            )
        y = adata.obs[labels_key].astype(str).to_numpy()
        yield _with_novel("test", train, test, y, self.seed)


class LeaveOneGroupOut:
    """Cross-domain generalisation: train on every group but one, test on that group.

    Cell types of the test group that no training group has are reported as novel.

    Parameters
    ----------
    key
        Column of groups (tissue, donor, chemistry, dataset).
    groups
        Groups to hold out, one split each (default: every group).
    seed
        Seed of the models.
    """

    def __init__(self, key: str, groups: Sequence[str] | str | None = None, seed: int = 0):
        self.key = key
        self.groups = [groups] if isinstance(groups, str) else groups
        self.seed = seed

    def __repr__(self) -> str:
        return f"LeaveOneGroupOut(key={self.key!r}, groups={self.groups})"

    def describe(self) -> str:
        """One line for reports."""
        which = "each group" if self.groups is None else ", ".join(map(str, self.groups))
        return f"leave one group out over obs[{self.key!r}] (held out: {which})"

    def split(self, adata: ad.AnnData, labels_key: str) -> Iterator[Fold]:
        """Yield one fold per held-out group."""
        values = _column(adata, self.key).astype(str).to_numpy()
        present = list(dict.fromkeys(values))
        groups = present if self.groups is None else [str(g) for g in self.groups]
        missing = [g for g in groups if g not in present]
        if missing:
            raise _core.InputError(
                f"Group(s) {missing} not in obs[{self.key!r}]; it holds {sorted(present)[:20]}."
            )
        if len(present) < 2:
            raise _core.InputError(f"obs[{self.key!r}] has one group only: nothing to hold out.")
        y = adata.obs[labels_key].astype(str).to_numpy()
        for group in groups:
            test = values == group
            yield _with_novel(
                f"{self.key}={group}", np.flatnonzero(~test), np.flatnonzero(test), y, self.seed
            )


def _column(adata: ad.AnnData, key: str):
    if key not in adata.obs:
        raise _core.InputError(
            f"No column {key!r} in obs (columns: {list(adata.obs.columns)[:20]}): pass the column "
            "that holds the split or the groups."
        )
    return adata.obs[key]


def make_split(
    split: StratifiedKFold | PredefinedSplit | LeaveOneGroupOut | str | None = None,
) -> StratifiedKFold | PredefinedSplit | LeaveOneGroupOut:
    """Return a split object given one or a short spec.

    ``None`` or ``"kfold"``: 5-fold; ``"kfold:10"``; ``"column:split"``: the predefined split in
    ``obs["split"]``; ``"group:donor"``: leave each donor out; ``"group:donor=D1"``: leave D1 out.
    """
    if split is None:
        return StratifiedKFold()
    if not isinstance(split, str):
        if not hasattr(split, "split"):
            raise ParameterError(f"Not a split: {split!r}.")
        return split
    kind, _, arg = split.partition(":")
    if kind == "kfold":
        return StratifiedKFold(int(arg) if arg else 5)
    if kind == "column" and arg:
        return PredefinedSplit(arg)
    if kind == "group" and arg:
        key, _, group = arg.partition("=")
        return LeaveOneGroupOut(key, [group] if group else None)
    raise ParameterError(
        f"Unknown split {split!r}: use 'kfold', 'kfold:N', 'column:KEY', 'group:KEY' or "
        "'group:KEY=VALUE'."
    )


def subsample_training(
    train: np.ndarray, y: np.ndarray, fractions: Sequence[float], seed: int = 0
) -> dict[float, np.ndarray]:
    """Nested stratified subsets of training cells, one per fraction (for learning curves).

    Each class keeps ``max(1, round(fraction * n_class))`` cells, taken as a prefix of one
    random order per class, so a smaller subset is contained in every larger one.
    """
    train = np.asarray(train, dtype=int)
    labels = np.asarray(y)[train]
    rng = np.random.default_rng(seed)
    orders = {c: rng.permutation(train[labels == c]) for c in np.unique(labels)}
    out = {}
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ParameterError(f"Training fractions must be in (0, 1], got {fraction}.")
        parts = [o[: max(1, int(round(fraction * len(o))))] for o in orders.values()]
        out[float(fraction)] = np.sort(np.concatenate(parts))
    return out


def cross_domain(
    key: str, train: str | Sequence[str], test: str | Sequence[str], seed: int = 0
) -> PredefinedSplit:
    """Train on cells whose ``obs[key]`` is in ``train``, test on those in ``test``.

    For cross-domain generalisation (tissues, chemistries, datasets): test cells of cell types
    never seen in training are set apart as novel (reported, not scored). Cells in neither
    group are unused.
    """
    train = [train] if isinstance(train, str) else list(train)
    test = [test] if isinstance(test, str) else list(test)
    if set(train) & set(test):
        raise ParameterError(f"{sorted(set(train) & set(test))} are in both train and test.")
    return PredefinedSplit(key, train=train, test=test, val=(), seed=seed)


def cross_tissue(
    train: str | Sequence[str] | None = None,
    test: str | Sequence[str] = "brain",
    key: str = "tissue_general",
    seed: int = 0,
) -> PredefinedSplit:
    """Heimdall's cross-tissue setting: train on the GI tract, test on the brain (by default).

    ``train`` defaults to the census ``tissue_general`` values of the gastrointestinal tract
    (:data:`cellformer.datasets.GI_TRACT`) that the data holds; use with
    :func:`cellformer.datasets.sctab`.
    """
    from cellformer.datasets import GI_TRACT

    return cross_domain(key, GI_TRACT if train is None else train, test, seed)
