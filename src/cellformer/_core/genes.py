"""Gene-ID harmonisation between a trained model and a query."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .checks import InputError
from .gene_match import _name_columns, gene_id_kind, match_genes
from .gene_tables import GeneMapping

__all__ = [
    "GeneAlignment",
    "GeneOverlap",
    "align_genes",
    "gene_id_kind",
    "gene_overlap",
    "subset_genes",
]

logger = logging.getLogger("cellformer")


@dataclass(frozen=True)
class GeneAlignment:
    """How a query's genes map onto a model's genes.

    Attributes
    ----------
    model_idx
        Positions in the model's gene list of the genes the query has.
    query_idx
        Positions of the same genes in the query's ``var_names``.
    n_model_genes
        Number of genes the model uses.
    missing
        Model genes absent from the query: they are *unmeasured* (NaN in the aligned matrix),
        not measured zeros.
    n_query_genes
        Number of genes in the query (``None``: unknown).
    mapping
        How the query's gene names were mapped onto the model's naming scheme (Ensembl IDs,
        symbols, orthologs), when they were (see :func:`~cellformer.pp.map_gene_names`).
    """

    model_idx: np.ndarray
    query_idx: np.ndarray
    n_model_genes: int
    missing: list[str]
    n_query_genes: int | None = None
    mapping: GeneMapping | None = None

    @property
    def coverage(self) -> float:
        """Share of the model's genes present in the query."""
        return len(self.model_idx) / self.n_model_genes

    @property
    def is_identity(self) -> bool:
        """True when the query has exactly the model's genes in the model's order."""
        return (
            not self.missing
            and len(self.query_idx) == self.n_model_genes
            and self.n_query_genes in (None, self.n_model_genes)
            and bool(np.array_equal(self.query_idx, np.arange(self.n_model_genes)))
        )

    def summary(self) -> str:
        """One line describing the coverage."""
        text = (
            f"Query covers {self.coverage:.1%} of the model's {self.n_model_genes} genes"
            f" ({len(self.missing)} missing"
        )
        if self.missing:
            text += (
                f", treated as unmeasured: {', '.join(self.missing[:5])}"
                f"{', ...' if len(self.missing) > 5 else ''}"
            )
        text += ")."
        if self.mapping is not None:
            text += f" {self.mapping.summary()}"
        return text


def mismatch_hints(
    model_genes,
    query_genes,
    query_cells=None,
    min_coverage: float = 0.5,
    what: str = "model",
    id_kinds: bool = True,
    query_var: pd.DataFrame | None = None,
    case: bool = True,
) -> str:
    """Why a query's genes may not match a model's: ID kinds, case, spaces, a transposed AnnData.

    Sentences to append to an error message (empty when nothing is recognised); ``what`` names
    the other side ("model", "reference"); ``id_kinds=False`` leaves out the ID-kind sentence
    (a :class:`GeneOverlap` summary already has it), ``case=False`` the species one (the
    names were mapped already). ``query_var`` (the query's ``var``): a
    column that holds the model's genes is named with the line that uses it.
    """
    model_genes = pd.Index(model_genes).astype(str)
    query_genes = pd.Index(query_genes).astype(str)
    model_kind, query_kind = gene_id_kind(model_genes), gene_id_kind(query_genes)
    hint = ""
    if id_kinds and model_kind != query_kind:
        hint = (
            f" The {what} uses {model_kind} (e.g. {', '.join(model_genes[:3])}) but the query uses "
            f"{query_kind} (e.g. {', '.join(query_genes[:3])}): convert the query's var_names, "
            "e.g. adata.var_names = adata.var['gene_symbols'] or map IDs with a gene annotation table."
        )
    lower_overlap = model_genes.str.upper().isin(query_genes.str.upper()).mean()
    if case and lower_overlap >= min_coverage:
        hint += (
            " The names match when case is ignored: are model and query from different species? "
            "Map orthologs, or fix the case if it is the same species."
        )
    stripped = model_genes.str.strip().isin(query_genes.str.strip()).mean()
    if stripped >= min_coverage:
        hint += (
            " The names match once spaces are removed: strip them, "
            "adata.var_names = adata.var_names.str.strip()."
        )
    best = None
    for column, names in _name_columns(query_var):
        share = model_genes.isin(names).mean()
        if share >= min_coverage and (best is None or share > best[1]):
            best = (column, share)
    if best is not None:
        hint += (
            f" adata.var[{best[0]!r}] holds {best[1]:.0%} of the {what}'s genes: use it, "
            f"adata.var_names = adata.var[{best[0]!r}].astype(str); adata.var_names_make_unique()."
        )
    if (
        query_cells is not None
        and model_genes.isin(pd.Index(query_cells).astype(str)).mean() >= min_coverage
    ):
        hint += (
            f" The query's obs_names are the {what}'s genes: the AnnData looks transposed "
            "(genes × cells); use adata.T."
        )
    return hint


def align_genes(
    model_genes,
    query_genes,
    min_coverage: float = 0.5,
    query_cells=None,
    query_var: pd.DataFrame | None = None,
) -> GeneAlignment:
    """Map a query's genes onto a model's genes and report coverage.

    Parameters
    ----------
    model_genes
        Genes the model was trained on, in its order.
    query_genes
        The query's ``var_names``.
    min_coverage
        Below this share of the model's genes present in the query, raise an error.
    query_cells, query_var
        The query's ``obs_names`` and ``var``, only read for the error message (a transposed
        AnnData, a ``var`` column that holds the model's genes).

    Returns
    -------
    A :class:`GeneAlignment`; its :meth:`~GeneAlignment.summary` is also logged when genes are missing.

    Raises
    ------
    InputError
        Too few genes overlap; the message names missing genes and what ID types both sides use.
    """
    model_genes = pd.Index(model_genes).astype(str)
    query_genes = pd.Index(query_genes).astype(str)
    if query_genes.has_duplicates:
        dups = query_genes[query_genes.duplicated()].unique()
        raise InputError(
            f"The query has duplicated gene names (e.g. {', '.join(dups[:5])}). Make them unique with "
            "adata.var_names_make_unique() before predicting."
        )
    pos, mapping, table_error = match_genes(model_genes, query_genes, query_var)
    present = pos >= 0
    alignment = GeneAlignment(
        model_idx=np.flatnonzero(present),
        query_idx=pos[present],
        n_model_genes=len(model_genes),
        missing=list(model_genes[~present]),
        n_query_genes=len(query_genes),
        mapping=mapping,
    )
    if alignment.coverage < min_coverage:
        hint = mismatch_hints(
            model_genes,
            query_genes,
            query_cells,
            min_coverage,
            id_kinds=mapping is None,
            query_var=query_var,
            case=mapping is None,
        )
        if mapping is not None:
            hint = f" {mapping.summary()} The query lacks the other genes.{hint}"
        elif table_error is not None:
            hint += f" {table_error}"
        fix = (
            " To annotate this query, train a model on the genes it shares with the reference: "
            "cf.tl.annotate(query, reference=ref, labels_key=..., genes='shared'), "
            "cf.pp.subset_genes(ref, query.var_names) before setup_anndata, or the CLI's "
            "--genes shared; or lower min_gene_coverage= if you accept the loss."
        )
        raise InputError(
            f"Only {alignment.coverage:.1%} of the model's {len(model_genes)} genes "
            f"({len(alignment.model_idx)}) are in the query (need at least {min_coverage:.0%}). "
            f"Missing, e.g.: {', '.join(alignment.missing[:5])}.{hint}"
            f"{fix if len(alignment.model_idx) else ''}"
        )
    if alignment.missing or mapping is not None:
        logger.warning(alignment.summary())
    else:
        logger.debug(alignment.summary())
    return alignment


@dataclass(frozen=True)
class GeneOverlap:
    """The genes a reference and a query share (see :func:`~cellformer.pp.gene_overlap`).

    Attributes
    ----------
    shared
        Shared genes, in the reference's order.
    n_reference, n_query
        Genes of each.
    reference_kind, query_kind
        What the gene names look like (:func:`gene_id_kind`).
    mapping
        How the query's names were mapped onto the reference's scheme (Ensembl IDs, symbols,
        orthologs) when the two differ, else ``None``; the table of pairs is
        ``mapping.as_frame(query.var_names)``.
    """

    shared: pd.Index
    n_reference: int
    n_query: int
    reference_kind: str
    query_kind: str
    mapping: GeneMapping | None = None

    @property
    def n_shared(self) -> int:
        """Number of shared genes."""
        return len(self.shared)

    @property
    def reference_coverage(self) -> float:
        """Share of the reference's genes that the query has."""
        return self.n_shared / max(self.n_reference, 1)

    @property
    def query_coverage(self) -> float:
        """Share of the query's genes that the reference has."""
        return self.n_shared / max(self.n_query, 1)

    def summary(self) -> str:
        """Return a one-paragraph report."""
        text = (
            f"{self.n_shared} genes shared: {self.reference_coverage:.1%} of the reference's "
            f"{self.n_reference} and {self.query_coverage:.1%} of the query's {self.n_query}."
        )
        if self.mapping is not None:
            text += f" {self.mapping.summary()}"
        elif self.reference_kind != self.query_kind:
            text += (
                f" The reference uses {self.reference_kind}, the query {self.query_kind}: map one "
                "to the other (e.g. var_names from a gene_symbols or gene_ids column)."
            )
        return text

    def __repr__(self) -> str:
        return f"GeneOverlap({self.summary()})"


def gene_overlap(reference, query) -> GeneOverlap:
    """Report the genes a reference and a query share, before anything trains.

    Parameters
    ----------
    reference, query
        AnnData objects, or gene names.

    Returns
    -------
    A :class:`GeneOverlap`: ``.shared`` genes, coverage of each side, and a ``summary()`` that
    says when the two use different kinds of gene IDs.

    Examples
    --------
    >>> import cellformer as cf
    >>> overlap = cf.pp.gene_overlap(reference, query)
    >>> print(overlap.summary())  # doctest: +SKIP
    """
    import anndata as ad

    for name, value in (("reference", reference), ("query", query)):
        if isinstance(value, (str, bytes)) or not (
            isinstance(value, ad.AnnData) or pd.api.types.is_list_like(value)
        ):
            raise InputError(
                f"gene_overlap: {name} must be an AnnData or a list of gene names, got "
                f"{type(value).__name__}. Read a file first: sc.read_h5ad(path)."
            )
    ref = pd.Index(getattr(reference, "var_names", reference)).astype(str)
    qry = pd.Index(getattr(query, "var_names", query)).astype(str)
    pos, mapping, _ = match_genes(ref, qry, getattr(query, "var", None))
    return GeneOverlap(
        shared=ref[pos >= 0],
        n_reference=len(ref),
        n_query=len(qry),
        reference_kind=gene_id_kind(ref),
        query_kind=gene_id_kind(qry),
        mapping=mapping,
    )


def _row_sums(X, chunk: int = 10_000) -> np.ndarray:
    """Each row's sum in float64, in chunks of rows (backed matrices have no ``sum``)."""
    sums = np.empty(X.shape[0], dtype=np.float64)
    for start in range(0, X.shape[0], chunk):
        block = X[start : start + chunk]
        sums[start : start + chunk] = np.asarray(block.sum(axis=1, dtype=np.float64)).ravel()
    return sums


#: ``obs`` column written by :func:`subset_genes`: each cell's library size over all its genes.
LIBRARY_KEY = "cellformer_library_size"


def subset_genes(adata, genes, layer: str | None = None, library_size_key: str | None = None):
    """Copy of ``adata`` on the given genes, keeping each cell's full library size.

    Counts of a gene subset normalised over the subset differ from a query normalised over its
    whole transcriptome; so, when ``adata`` holds counts, each cell's total over *all* its genes
    is written to ``obs["cellformer_library_size"]`` (or kept from ``library_size_key``) and
    ``uns["cellformer"]["library_size_key"]`` names it, for
    ``setup_anndata(..., library_size_key=...)``.

    Parameters
    ----------
    adata
        Cells × genes.
    genes
        Genes to keep (e.g. ``query.var_names``); those ``adata`` lacks are ignored. Order follows
        ``adata``.
    layer
        Layer with the expression values (``None``: ``X``).
    library_size_key
        An ``obs`` column that already holds library sizes over the whole transcriptome (e.g.
        ``nCount_RNA``); it is copied instead of summing the (possibly already subset) genes.

    Returns
    -------
    anndata.AnnData
        The subset (a copy).
    """
    from .checks import check_expression, get_matrix

    overlap = gene_overlap(adata, pd.Index(genes))
    if overlap.n_shared == 0:
        raise InputError(
            f"No gene is shared: {overlap.summary()} Check that both use the same kind of gene IDs."
        )
    kind = check_expression(adata, layer)
    keep = adata.var_names.isin(overlap.shared)
    if library_size_key is not None:
        if library_size_key not in adata.obs:
            raise InputError(
                f"library_size_key={library_size_key!r} is not a column of adata.obs "
                f"(columns: {list(adata.obs.columns)[:20]})."
            )
        library = adata.obs[library_size_key].to_numpy(dtype=np.float64)
    elif kind == "counts":
        library = _row_sums(get_matrix(adata, layer))
    else:
        library = None
    # a backed (on-disk) AnnData is read into memory on the kept genes only
    sub = adata[:, keep].to_memory() if adata.isbacked else adata[:, keep].copy()
    if library is not None:
        sub.obs[LIBRARY_KEY] = library
    logger.info("Kept %s", overlap.summary())
    return sub
