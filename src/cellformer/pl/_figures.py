"""All benchmark figures of a run, written to a directory for the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ._bench import (
    confusion_matrix,
    finished,
    latent_umap,
    learning_curve,
    metric_bars,
    ontology_depth,
)
from ._reliability import reliability

__all__ = ["benchmark_figures"]


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


def benchmark_figures(results: pd.DataFrame, out_dir: str | Path) -> dict[str, list[str]]:
    """Draw every figure the results allow into ``out_dir`` (PNG); return file names by kind.

    Kinds: ``metric_bars`` (macro-F1 per split), ``learning_curve`` (against cells and against
    parameters, with several training sizes), ``ontology`` (accuracy against Cell Ontology depth,
    with ``label_ontology=`` runs), ``confusion`` and ``reliability`` per model,
    ``umap`` per model (with ``embeddings=True`` runs). Hand the result to
    :func:`cellformer.bench.write_report` to link them from the report.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, list[str]] = {}

    def save(kind: str, name: str, fig) -> None:
        fig.savefig(out / name, dpi=120, bbox_inches="tight")
        plt.close(fig)
        figures.setdefault(kind, []).append(name)

    ok = finished(results)
    models = [m for m in dict.fromkeys(ok["model"]) if m != "majority"]
    ax = metric_bars(results, "macro_f1")
    save("metric_bars", "metric_bars.png", ax.figure)
    if "train_size" in ok and ok["train_size"].nunique() > 1:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
        learning_curve(results, "macro_f1", x="n_train", ax=axes[0])
        learning_curve(results, "macro_f1", x="n_params", ax=axes[1])
        axes[1].set_title("Learning curve (against parameters)")
        save("learning_curve", "learning_curve.png", fig)
    if "ontology_accuracy" in ok and ok["ontology_accuracy"].notna().any():
        ax = ontology_depth(results)
        save("ontology", "ontology_depth.png", ax.figure)
    for model in models:
        ax = confusion_matrix(results, model)
        save("confusion", f"confusion_{_safe(model)}.png", ax.figure)
        rows = ok[ok["model"] == model]
        if "confidence" in rows and rows["confidence"].notna().any():
            ax = reliability(results, model=model, show=False)
            save("reliability", f"reliability_{_safe(model)}.png", ax.figure)
        if "umap" in rows and rows["umap"].notna().any():
            axes = latent_umap(results, model)
            save("umap", f"umap_{_safe(model)}.png", axes[0].figure)
    return figures
