"""Preparing data: validation, gene names across naming schemes, log-normalisation, labels.

The checks, statistics and gene alignment every model runs live in cellformer's internal
layer; the names here are those users call. Names this module exported before 0.2 that are
internal (``get_matrix``, ``iter_lognorm_chunks``, ``GeneAlignment`` ...) still import, with a
:class:`FutureWarning`.
"""

import warnings

from cellformer import _core
from cellformer._core import (
    GeneMapping,
    GeneOverlap,
    GeneTableError,
    check_expression,
    gene_id_kind,
    gene_knn_graph,
    gene_overlap,
    lognormalize,
    map_gene_names,
    map_genes,
    subset_genes,
    validate_anndata,
)

from ._ontology import (
    CL_SCHEMA,
    CellOntology,
    OntologyError,
    cell_ontology,
    harmonize_labels,
    ontology_scores,
)
from ._timepoints import PREVIOUS_SUFFIX, pair_timepoints

__all__ = [
    "CellOntology",
    "GeneMapping",
    "GeneOverlap",
    "GeneTableError",
    "OntologyError",
    "cell_ontology",
    "check_expression",
    "gene_id_kind",
    "gene_knn_graph",
    "gene_overlap",
    "harmonize_labels",
    "lognormalize",
    "map_gene_names",
    "map_genes",
    "ontology_scores",
    "pair_timepoints",
    "subset_genes",
    "validate_anndata",
]

#: Names ``cf.pp`` exported before they moved to the internal layer (or to ``cf``, the errors).
_MOVED = {
    "CellformerError": "cellformer.CellformerError",
    "InputError": "cellformer.InputError",
    "OverwriteError": "cellformer.OverwriteError",
    "ParameterError": "cellformer.ParameterError",
    "UnsafeFileError": "cellformer.UnsafeFileError",
    **dict.fromkeys(
        [
            "LIBRARY_KEY",
            "GeneAlignment",
            "align_genes",
            "check_key_prefix",
            "check_labels",
            "check_library_sizes",
            "check_var_names",
            "detect_expression_kind",
            "fit_scaler",
            "get_matrix",
            "iter_lognorm_chunks",
            "lognorm_csr",
        ],
        None,
    ),
}
#: Constants that stay importable without a warning (not listed in ``__all__``).
_CONSTANTS = (CL_SCHEMA, PREVIOUS_SUFFIX)


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'cellformer.pp' has no attribute {name!r}")
    where = _MOVED[name]
    hint = f"use {where}" if where else "it is internal and may change without notice"
    warnings.warn(
        f"cellformer.pp.{name} is no longer public API: {hint}.", FutureWarning, stacklevel=2
    )
    return getattr(_core, name)
