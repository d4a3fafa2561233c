"""Example data: an offline default and pooch-backed downloads with a local cache."""

from ._download import DownloadError, data_dir, fetch
from ._loaders import load, pbmc3k, pbmc68k_reduced
from ._sctab import GI_TRACT, SCTAB_ASSAYS, CellOntology, sctab, sctab_genes

__all__ = [
    "GI_TRACT",
    "CellOntology",
    "SCTAB_ASSAYS",
    "DownloadError",
    "data_dir",
    "fetch",
    "load",
    "pbmc3k",
    "pbmc68k_reduced",
    "sctab",
    "sctab_genes",
]
