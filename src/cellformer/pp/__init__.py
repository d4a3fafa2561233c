"""Preparing data: validation, gene names across naming schemes, log-normalisation, labels.

The checks, statistics and gene alignment every model runs live in cellformer's internal
layer; the names here are those users call. Names this module exported before 0.2 that are
internal (``get_matrix``, ``iter_lognorm_chunks``, ``GeneAlignment`` ...) still import, with a
:class:`FutureWarning`.
"""

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
from cellformer._utils import moved_names

from ._ontology import CL_SCHEMA as CL_SCHEMA  # a documented constant, not in __all__
from ._ontology import (
    CellOntology,
    OntologyError,
    cell_ontology,
    harmonize_labels,
    ontology_scores,
)
from ._timepoints import PREVIOUS_SUFFIX as PREVIOUS_SUFFIX  # likewise
from ._timepoints import pair_timepoints

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
__getattr__ = moved_names(
    "cellformer.pp", {name: (getattr(_core, name), where) for name, where in _MOVED.items()}
)
