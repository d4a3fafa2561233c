"""Selections of benchmark result rows shared by summaries, reports, plots and the CLI."""

from __future__ import annotations

import pandas as pd

from ._metrics import EXTRA, ONTOLOGY_SCORES, SCORES

__all__ = ["at_train_size", "finished", "summarize"]


def finished(results: pd.DataFrame) -> pd.DataFrame:
    """Return the rows whose model did not fail."""
    return results[results["error"].isna()] if "error" in results else results


def at_train_size(results: pd.DataFrame, size: float | None = None) -> pd.DataFrame:
    """Return the rows of one training size (default: the largest); all rows without sizes."""
    if "train_size" not in results or not results["train_size"].notna().any():
        return results
    size = results["train_size"].max() if size is None else size
    return results[results["train_size"] == size]


def summarize(
    results: pd.DataFrame, metrics=SCORES, train_size: float | None = None
) -> pd.DataFrame:
    """Mean and standard deviation over splits, one row per model (majority line included).

    With several training sizes (a learning curve), the rows of ``train_size`` (default: the
    largest) are summarised.
    """
    ok = at_train_size(finished(results), train_size)
    columns = [*metrics, *EXTRA]
    columns += [c for c in ONTOLOGY_SCORES if c in ok and ok[c].notna().any()]
    agg = ok.reindex(columns=["model", *columns]).groupby("model", sort=False)[columns]
    agg = agg.agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" for m, s in agg.columns]
    return agg
