"""Plots."""

from ._bench import confusion_matrix, latent_umap, learning_curve, metric_bars, ontology_depth
from ._figures import benchmark_figures
from ._reliability import reliability

__all__ = [
    "benchmark_figures",
    "confusion_matrix",
    "latent_umap",
    "learning_curve",
    "metric_bars",
    "ontology_depth",
    "reliability",
]
