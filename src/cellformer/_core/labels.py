"""Checks on the cell-type column: present, strings, real labels, at least two types."""

from __future__ import annotations

import difflib
import warnings

import anndata as ad
import numpy as np
import pandas as pd

from cellformer._errors import InputError

__all__ = ["MISSING_LABELS", "check_labels"]

#: Label values (lower case, stripped) that mean "no label" in the wild.
MISSING_LABELS = frozenset(
    {"", "nan", "na", "n/a", "none", "null", "unknown", "unlabeled", "unlabelled", "?", "-"}
)


def _check_label_types(col: pd.Series, labels_key: str) -> None:
    """Refuse labels that are not strings (booleans, numbers, mixed types): say ``.astype(str)``."""
    values = col.cat.categories if isinstance(col.dtype, pd.CategoricalDtype) else col.dropna()
    kinds = {type(v).__name__ for v in pd.unique(np.asarray(values, dtype=object))}
    if kinds <= {"str", "str_"}:
        return
    raise InputError(
        f"adata.obs[{labels_key!r}] holds {' and '.join(sorted(kinds))} values, not cell-type "
        "names: labels are strings. If these values are what you mean, convert them: "
        f"adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].astype(str)."
    )


def _warn_near_duplicate_labels(labelled: pd.Series, labels_key: str) -> None:
    """Warn when labels differ only by case or spaces (``"T cell"`` and ``"t cell "``)."""
    names = pd.Series(labelled.unique())
    keys = names.str.split().str.join(" ").str.lower()
    groups = [list(g) for _, g in names.groupby(keys) if len(g) > 1]
    if groups:
        listed = "; ".join(" / ".join(repr(v) for v in g) for g in groups)
        warnings.warn(
            f"adata.obs[{labels_key!r}] has labels that differ only by case or spaces: {listed}. "
            "They are learned as different cell types; if they are one, make them equal first "
            f"(e.g. adata.obs[{labels_key!r}].astype(str).str.strip()).",
            UserWarning,
            stacklevel=3,
        )


def check_labels(
    adata: ad.AnnData,
    labels_key: str,
    unlabeled_category: str | None = None,
    min_classes: int = 2,
) -> pd.Series:
    """Validate a cell-type column and return the labels of the labelled cells.

    Parameters
    ----------
    adata
        Data with the labels in ``obs``.
    labels_key
        Column of ``adata.obs``.
    unlabeled_category
        Value that marks unlabelled cells (ignored when counting classes).
    min_classes
        At least this many distinct cell types are needed.

    Returns
    -------
    The labels of labelled cells as strings, indexed by ``obs_names``.
    """
    if labels_key not in adata.obs:
        close = difflib.get_close_matches(
            labels_key, list(map(str, adata.obs.columns)), n=3, cutoff=0.5
        )
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise InputError(
            f"labels_key={labels_key!r} is not a column of adata.obs.{hint} "
            f"Available columns: {list(map(str, adata.obs.columns))}."
        )
    col = adata.obs[labels_key]
    if pd.api.types.is_float_dtype(col) and col.dropna().nunique() > 50:
        raise InputError(
            f"adata.obs[{labels_key!r}] holds continuous numbers, not cell types. Pass the column "
            "with curated cell-type names."
        )
    _check_label_types(col, labels_key)
    labelled = col.dropna().astype(str)
    if unlabeled_category is not None:
        labelled = labelled[labelled != str(unlabeled_category)]
    missing = labelled[labelled.str.strip().str.lower().isin(MISSING_LABELS)]
    if len(missing):
        found = missing.value_counts()
        listed = ", ".join(f"{v!r} ({n} cells)" for v, n in found.items())
        replace = dict.fromkeys(found.index, unlabeled_category or "Unknown")
        raise InputError(
            f"adata.obs[{labels_key!r}] has labels that mean 'no label': {listed}; they would be "
            "learned as a cell type. Mark those cells as unlabelled: "
            f"adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].astype(str).replace({replace!r})"
            + (f", or pass unlabeled_category={found.index[0]!r}." if len(found) == 1 else ".")
        )
    _warn_near_duplicate_labels(labelled, labels_key)
    n_classes = labelled.nunique()
    if n_classes < min_classes:
        found = f"only {labelled.unique().tolist()}" if n_classes else "no labelled cells"
        raise InputError(
            f"adata.obs[{labels_key!r}] has {found}: a classifier needs at least {min_classes} cell "
            "types. Check that the column holds cell types and that the cells were not subset to one type."
        )
    return labelled
