"""Input validation, gene harmonisation and per-fold statistics shared by all models."""

from ._checks import (
    CellformerError,
    InputError,
    OverwriteError,
    ParameterError,
    UnsafeFileError,
    check_expression,
    check_key_prefix,
    check_labels,
    check_library_sizes,
    check_var_names,
    detect_expression_kind,
    get_matrix,
    validate_anndata,
)
from ._gene_tables import GeneMapping, GeneTableError, map_gene_names, map_genes
from ._genes import (
    LIBRARY_KEY,
    GeneAlignment,
    GeneOverlap,
    align_genes,
    gene_id_kind,
    gene_overlap,
    subset_genes,
)
from ._graph import gene_knn_graph
from ._ontology import (
    CL_SCHEMA,
    CellOntology,
    OntologyError,
    cell_ontology,
    harmonize_labels,
    ontology_scores,
)
from ._stats import fit_scaler, iter_lognorm_chunks, lognorm_csr, lognormalize
from ._timepoints import PREVIOUS_SUFFIX, pair_timepoints

__all__ = [
    "CL_SCHEMA",
    "CellOntology",
    "OntologyError",
    "cell_ontology",
    "harmonize_labels",
    "ontology_scores",
    "LIBRARY_KEY",
    "PREVIOUS_SUFFIX",
    "GeneAlignment",
    "GeneMapping",
    "GeneOverlap",
    "CellformerError",
    "GeneTableError",
    "InputError",
    "OverwriteError",
    "ParameterError",
    "UnsafeFileError",
    "align_genes",
    "check_expression",
    "check_key_prefix",
    "check_labels",
    "check_library_sizes",
    "check_var_names",
    "detect_expression_kind",
    "fit_scaler",
    "gene_id_kind",
    "gene_overlap",
    "gene_knn_graph",
    "get_matrix",
    "iter_lognorm_chunks",
    "lognormalize",
    "map_gene_names",
    "map_genes",
    "pair_timepoints",
    "subset_genes",
    "validate_anndata",
]
