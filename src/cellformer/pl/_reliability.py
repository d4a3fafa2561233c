"""Reliability diagram: does a model's confidence match its accuracy."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd

from cellformer._errors import MissingKeyError
from cellformer.bench import reliability_bins

__all__ = ["reliability"]


def reliability(
    data: ad.AnnData | pd.DataFrame | tuple,
    labels_key: str | None = None,
    model: str | None = None,
    key_prefix: str = "cellformer",
    n_bins: int = 10,
    ax=None,
    show: bool | None = None,
):
    """Draw a reliability diagram: accuracy per confidence bin against the diagonal.

    Parameters
    ----------
    data
        An AnnData annotated by ``model.predict`` (``obs[f"{key_prefix}_prediction"]`` and
        ``_confidence``) with true labels in ``obs[labels_key]``; or a tuple ``(y_true, probs,
        classes)`` of labels, a probability matrix and its column classes (e.g. the frame that
        ``predict(soft=True)`` returns: ``(y, df.to_numpy(), df.columns)``); or the results of
        :func:`cellformer.bench.run` (pooled over splits, pick ``model``).
    labels_key
        Column of true cell types (AnnData input).
    model
        Model to draw (benchmark results input).
    key_prefix
        Prefix of the prediction columns.
    n_bins
        Equal-width confidence bins.
    ax
        Matplotlib axes to draw on.
    show
        Show the figure (default: only when no ``ax`` is given and matplotlib is interactive).

    Returns
    -------
    The axes; the bin data is in ``ax.reliability`` (``n``, ``accuracy``, ``confidence``, ``ece``).

    Examples
    --------
    >>> model.predict(adata)
    >>> cf.pl.reliability(adata, labels_key="cell_type")
    """
    import matplotlib.pyplot as plt

    if isinstance(data, ad.AnnData):
        if labels_key is None or labels_key not in data.obs:
            raise MissingKeyError(
                f"Pass labels_key=, a column of obs with the true cell types; got {labels_key!r}."
            )
        pred_key, conf_key = f"{key_prefix}_prediction", f"{key_prefix}_confidence"
        if pred_key not in data.obs or conf_key not in data.obs:
            raise MissingKeyError(
                f"No obs[{pred_key!r}] / obs[{conf_key!r}]: run model.predict(adata) first."
            )
        y = data.obs[labels_key].astype(str).to_numpy()
        correct = data.obs[pred_key].astype(str).to_numpy() == y
        confidence = data.obs[conf_key].to_numpy(dtype=np.float64)
    elif isinstance(data, pd.DataFrame):
        from ._bench import _model_rows

        rows = _model_rows(data, model)
        y = np.concatenate([np.asarray(v, dtype=str) for v in rows["y_true"]])
        correct = np.concatenate([np.asarray(v, dtype=str) for v in rows["y_pred"]]) == y
        confidence = np.concatenate([np.asarray(v, dtype=float) for v in rows["confidence"]])
    else:
        y, probs, classes = data
        probs = np.asarray(probs, dtype=np.float64)
        classes = np.asarray(classes, dtype=str)
        correct = classes[probs.argmax(axis=1)] == np.asarray(y, dtype=str)
        confidence = probs.max(axis=1)
    bins = reliability_bins(confidence, correct, n_bins)
    ece = bins["ece"]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
        show = plt.isinteractive() if show is None else show
    edges = bins["edges"]
    width = np.diff(edges)
    filled = bins["n"] > 0
    ax.bar(
        edges[:-1][filled],
        bins["accuracy"][filled],
        width=width[filled],
        align="edge",
        edgecolor="black",
        color="tab:blue",
        alpha=0.8,
        label="accuracy",
    )
    gap = bins["confidence"][filled] - bins["accuracy"][filled]
    ax.bar(
        edges[:-1][filled],
        gap,
        bottom=bins["accuracy"][filled],
        width=width[filled],
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="confidence",
        ylabel="accuracy",
        title=f"Reliability{f' of {model}' if model else ''} (ECE {ece:.3f})",
    )
    ax.legend(loc="upper left", fontsize="small")
    ax.reliability = bins
    if show:
        plt.show()
    return ax
