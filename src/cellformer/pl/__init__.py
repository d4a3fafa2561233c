"""Plots."""

from ._bench import confusion_matrix, latent_umap, learning_curve, metric_bars
from ._reliability import reliability

__all__ = ["confusion_matrix", "latent_umap", "learning_curve", "metric_bars", "reliability"]
