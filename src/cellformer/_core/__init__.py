"""cellformer's internal layer: input checks, expression statistics, gene alignment, gene graphs.

Not public API: every subpackage imports these from here, and :mod:`cellformer.pp` re-exports
only what users call (validating data, mapping gene names, log-normalising, the gene graph).
"""

from .checks import (
    CellformerError,
    InputError,
    OverwriteError,
    ParameterError,
    UnsafeFileError,
    check_expression,
    check_has_genes,
    check_key_prefix,
    check_labels,
    check_library_sizes,
    check_var_names,
    detect_expression_kind,
    get_matrix,
    kind_matrix,
    validate_anndata,
)
from .gene_match import match_genes
from .gene_tables import GeneMapping, GeneTableError, map_gene_names, map_genes
from .genes import (
    LIBRARY_KEY,
    GeneAlignment,
    GeneOverlap,
    align_genes,
    gene_id_kind,
    gene_overlap,
    mismatch_hints,
    subset_genes,
)
from .graph import gene_knn_graph
from .stats import (
    TARGET_SUM,
    fit_scaler,
    iter_lognorm_chunks,
    lognorm_csr,
    lognormalize,
    scaler_from_sums,
)

__all__ = [
    "LIBRARY_KEY",
    "TARGET_SUM",
    "CellformerError",
    "GeneAlignment",
    "GeneMapping",
    "GeneOverlap",
    "GeneTableError",
    "InputError",
    "OverwriteError",
    "ParameterError",
    "UnsafeFileError",
    "align_genes",
    "check_expression",
    "check_has_genes",
    "check_key_prefix",
    "check_labels",
    "check_library_sizes",
    "check_var_names",
    "detect_expression_kind",
    "fit_scaler",
    "gene_id_kind",
    "gene_knn_graph",
    "gene_overlap",
    "get_matrix",
    "iter_lognorm_chunks",
    "kind_matrix",
    "lognorm_csr",
    "lognormalize",
    "map_gene_names",
    "map_genes",
    "match_genes",
    "mismatch_hints",
    "scaler_from_sums",
    "subset_genes",
    "validate_anndata",
]
