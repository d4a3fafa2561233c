"""cellformer: transformer cell-type classifiers for single-cell RNA-seq, done right."""

from . import bench, datasets, model, module, nn, pl, pp, tokenizers, train

__version__ = "0.1.0"

__all__ = [
    "bench",
    "datasets",
    "model",
    "module",
    "nn",
    "pl",
    "pp",
    "tokenizers",
    "train",
]
