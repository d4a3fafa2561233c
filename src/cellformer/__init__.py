"""cellformer: transformer cell-type classifiers for single-cell RNA-seq, done right."""

from . import bench, datasets, model, nn, pl, pp, tokenizers

__version__ = "0.1.0"

__all__ = ["bench", "datasets", "model", "nn", "pl", "pp", "tokenizers"]
