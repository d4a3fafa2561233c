"""Plots of benchmark results (the rows returned by :func:`cellformer.bench.run`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellformer._errors import InputError, MissingKeyError, ParameterError
from cellformer.bench._results import at_train_size, finished  # cross-package: result rows

__all__ = ["confusion_matrix", "latent_umap", "learning_curve", "metric_bars", "ontology_depth"]


def _axes(ax, figsize):
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    if not isinstance(results, pd.DataFrame) or "model" not in results:
        raise InputError("Expected the DataFrame returned by cellformer.bench.run.")
    return finished(results)


def _model_rows(results: pd.DataFrame, model: str) -> pd.DataFrame:
    rows = at_train_size(_finished(results))
    rows = rows[rows["model"] == model]
    if rows.empty:
        known = sorted(set(_finished(results)["model"]))
        raise MissingKeyError(f"No finished rows of model {model!r}; models: {known}.")
    return rows


def metric_bars(results: pd.DataFrame, metric: str = "macro_f1", ax=None):
    """Mean of ``metric`` per model as bars, each split's value as a point.

    The ``majority`` model is drawn as a dashed line (the score of always predicting the most
    frequent class). Uses the largest training size when the results hold a learning curve.

    Examples
    --------
    >>> results = cf.bench.run(adata, "cell_type", ["linear", "transformer"])
    >>> cf.pl.metric_bars(results, "macro_f1")
    """
    rows = at_train_size(_finished(results))
    if metric not in rows:
        raise MissingKeyError(f"No column {metric!r} in the results.")
    majority = rows[rows["model"] == "majority"][metric]
    rows = rows[rows["model"] != "majority"]
    models = list(dict.fromkeys(rows["model"]))
    ax = _axes(ax, (max(3.5, 1.5 + 0.9 * len(models)), 3.5))
    rng = np.random.default_rng(0)
    for i, model in enumerate(models):
        values = rows.loc[rows["model"] == model, metric].to_numpy(dtype=float)
        ax.bar(i, np.nanmean(values), color=f"C{i}", alpha=0.7, edgecolor="black")
        ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, color="black", s=12, zorder=3)
    if len(majority):
        ax.axhline(majority.mean(), color="grey", ls="--", lw=1, label="majority class")
        ax.legend(loc="lower right", fontsize="small")
    ax.set_xticks(range(len(models)), models, rotation=30, ha="right")
    ax.set(ylabel=metric.replace("_", " "), title=f"{metric.replace('_', ' ')} per split")
    ax.set_ylim(0, 1.0 if rows[metric].max() <= 1 else None)
    return ax


def learning_curve(results: pd.DataFrame, metric: str = "macro_f1", x: str = "n_train", ax=None):
    """Metric against training cells (``x="n_train"``) or parameters (``x="n_params"``).

    Mean ± sd over splits per training size, one line per model: whether the data is big enough
    for a transformer is where its curve crosses the linear model's.
    """
    if x not in ("n_train", "n_params"):
        raise ParameterError(f"x must be 'n_train' or 'n_params', got {x!r}.")
    rows = _finished(results)
    rows = rows[rows["model"] != "majority"]
    if rows["train_size"].nunique() < 2:
        raise ParameterError("These results have one training size: run bench.learning_curve.")
    ax = _axes(ax, (5, 3.5))
    for i, (model, df) in enumerate(rows.groupby("model", sort=False)):
        agg = df.groupby("train_size").agg(x=(x, "mean"), mean=(metric, "mean"), sd=(metric, "std"))
        ax.errorbar(
            agg["x"], agg["mean"], yerr=agg["sd"].fillna(0), marker="o", capsize=3,
            color=f"C{i}", label=model,
        )  # fmt: skip
    ax.set_xscale("log")
    label = "training cells" if x == "n_train" else "parameters"
    ax.set(xlabel=f"{label} (log scale)", ylabel=metric.replace("_", " "), title="Learning curve")
    ax.legend(fontsize="small")
    return ax


def confusion_matrix(
    results: pd.DataFrame | tuple, model: str | None = None, normalize: bool = True, ax=None
):
    """Confusion matrix (rows: true type, columns: predicted), pooled over splits.

    ``results`` is the DataFrame of :func:`cellformer.bench.run` (pick ``model``) or a pair
    ``(y_true, y_pred)``. With ``normalize``, each row sums to 1 (recall on the diagonal).
    """
    from sklearn.metrics import confusion_matrix as sk_confusion

    if isinstance(results, tuple):
        y_true, y_pred = (np.asarray(v, dtype=str) for v in results)
        title = "Confusion matrix"
    else:
        rows = _model_rows(results, model)
        y_true = np.concatenate([np.asarray(v, dtype=str) for v in rows["y_true"]])
        y_pred = np.concatenate([np.asarray(v, dtype=str) for v in rows["y_pred"]])
        title = f"Confusion matrix: {model}"
    labels = np.unique(np.concatenate([y_true, y_pred]))
    matrix = sk_confusion(y_true, y_pred, labels=labels).astype(float)
    if normalize:
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    n = len(labels)
    ax = _axes(ax, (2 + 0.45 * n, 1.6 + 0.45 * n))
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    ax.figure.colorbar(
        image, ax=ax, fraction=0.046, label="share of true type" if normalize else "cells"
    )
    ax.set_xticks(range(n), labels, rotation=45, ha="right", fontsize="small")
    ax.set_yticks(range(n), labels, fontsize="small")
    if n <= 15:
        for i in range(n):
            for j in range(n):
                value = f"{matrix[i, j]:.2f}" if normalize else f"{matrix[i, j]:.0f}"
                dark = matrix[i, j] > 0.6 * matrix.max()
                ax.text(j, i, value, ha="center", va="center", fontsize=6,
                        color="white" if dark else "black")  # fmt: skip
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax


def latent_umap(results: pd.DataFrame, model: str, axes=None, point_size: float = 12):
    """UMAP of a model's latent space of test cells, coloured by true and predicted type.

    Needs results of :func:`cellformer.bench.run` with ``embeddings=True``.
    """
    import matplotlib.pyplot as plt

    rows = _model_rows(results, model)
    if "umap" not in rows or rows["umap"].isna().all():
        raise MissingKeyError(
            f"No UMAP for {model!r}: run cellformer.bench.run(..., embeddings=True)."
        )
    row = rows[rows["umap"].notna()].iloc[0]
    coords = np.asarray(row["umap"], dtype=float)
    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    y_true = np.asarray(row["y_true"], dtype=str)
    y_pred = np.asarray(row["y_pred"], dtype=str)
    labels = np.unique(np.concatenate([y_true, y_pred]))
    colors = {label: plt.get_cmap("tab20")(i % 20) for i, label in enumerate(labels)}
    for ax, values, name in zip(axes, (y_true, y_pred), ("true type", "predicted"), strict=True):
        for label in labels:
            hit = values == label
            if hit.any():
                ax.scatter(*coords[hit].T, s=point_size, color=colors[label], label=label)
        ax.set(xticks=[], yticks=[], xlabel="UMAP 1", ylabel="UMAP 2")
        ax.set_title(f"{model}: {name}")
    axes[1].legend(loc="center left", bbox_to_anchor=(1, 0.5), fontsize="small", frameon=False)
    return axes


def ontology_depth(results: pd.DataFrame, ax=None):
    """Ontology-aware accuracy against the mean Cell Ontology depth of the answers, per model.

    For results of :func:`cellformer.bench.run` with ``label_ontology=``: each model's fine
    labels (filled circle: the top class for every cell) and its coarse answers (arrow's end:
    unsure cells answered with a common ancestor), the mean over splits; the label says the
    share of cells that kept a fine label. Up and to the right is better; a coarse answer
    trades depth (specificity) for correctness.

    Examples
    --------
    >>> results = cf.bench.run(adata, "cell_type", label_ontology=mapping)
    >>> cf.pl.ontology_depth(results)
    """
    rows = at_train_size(_finished(results))
    needed = ["ontology_accuracy", "ontology_accuracy_fine", "ontology_mean_depth"]
    if any(c not in rows for c in needed) or rows["ontology_accuracy"].isna().all():
        raise MissingKeyError(
            "No ontology scores in the results: run cf.bench.run(..., label_ontology=...)."
        )
    rows = rows[rows["model"] != "majority"].dropna(subset=needed)
    if "ontology_fine_depth" not in rows:
        rows = rows.assign(ontology_fine_depth=np.nan)
    means = rows.groupby("model", sort=False)[
        [*needed, "ontology_fine_share", "ontology_fine_depth"]
    ].mean()
    ax = _axes(ax, (5, 4))
    for i, (model, m) in enumerate(means.iterrows()):
        fine_depth = m["ontology_fine_depth"]
        if np.isfinite(fine_depth):
            ax.scatter(fine_depth, m["ontology_accuracy_fine"], color=f"C{i}", s=40, zorder=3)
            ax.annotate(
                "",
                xy=(m["ontology_mean_depth"], m["ontology_accuracy"]),
                xytext=(fine_depth, m["ontology_accuracy_fine"]),
                arrowprops={"arrowstyle": "->", "color": f"C{i}"},
            )
        ax.scatter(
            m["ontology_mean_depth"],
            m["ontology_accuracy"],
            color=f"C{i}",
            marker="s",
            s=40,
            label=f"{model} ({m['ontology_fine_share']:.0%} fine)",
            zorder=3,
        )
    ax.set(
        xlabel="mean depth of the answers in the Cell Ontology",
        ylabel="ontology-aware accuracy",
        title="Coarser, correct answers",
    )
    ax.legend(fontsize="small", loc="lower left")
    return ax
