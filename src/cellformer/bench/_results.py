"""Selections of benchmark result rows shared by summaries, reports, plots and the CLI."""

from __future__ import annotations

import pandas as pd

__all__ = ["at_train_size", "finished"]


def finished(results: pd.DataFrame) -> pd.DataFrame:
    """Return the rows whose model did not fail."""
    return results[results["error"].isna()] if "error" in results else results


def at_train_size(results: pd.DataFrame, size: float | None = None) -> pd.DataFrame:
    """Return the rows of one training size (default: the largest); all rows without sizes."""
    if "train_size" not in results or not results["train_size"].notna().any():
        return results
    size = results["train_size"].max() if size is None else size
    return results[results["train_size"] == size]
