"""Matching a query's gene names to a model's: as they are, or by a mapping.

The mappings tried: the query's ``var`` columns, compound names and the pinned gene tables.
"""

from __future__ import annotations

import logging
import re

import numpy as np
import pandas as pd

from .checks import InputError
from .gene_tables import GeneMapping, combine, map_gene_names, strip_version

__all__ = ["COMPOUND_SEPARATORS", "gene_id_kind", "match_genes"]

logger = logging.getLogger("cellformer")

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def gene_id_kind(names) -> str:
    """Guess whether gene names are Ensembl IDs or symbols (and which case convention).

    Returns
    -------
    One of ``"Ensembl IDs"``, ``"human-style symbols (upper case)"``,
    ``"mouse-style symbols (capitalised)"``, ``"gene symbols"`` or ``"empty"``.
    """
    names = pd.Index(names).astype(str)
    if len(names) == 0:
        return "empty"
    sample = names[: min(len(names), 500)]
    if np.mean([bool(_ENSEMBL.match(n)) for n in sample]) > 0.5:
        return "Ensembl IDs"
    letters = [n for n in sample if any(c.isalpha() for c in n)]
    if letters:
        upper = np.mean([n == n.upper() for n in letters])
        capital = np.mean([n[:1].isupper() and n[1:] == n[1:].lower() for n in letters])
        if upper > 0.8:
            return "human-style symbols (upper case)"
        if capital > 0.6:
            return "mouse-style symbols (capitalised)"
    return "gene symbols"


def match_genes(
    target_genes, query_genes, query_var: pd.DataFrame | None = None
) -> tuple[np.ndarray, GeneMapping | None, Exception | None]:
    """Query position of each target gene (-1: absent), mapping names when the schemes differ.

    Names are matched as they are first. When some target genes are left and the two sides
    use different kinds of names (Ensembl IDs and symbols, human and mouse, Ensembl IDs with
    other version suffixes), the query's own ``var`` columns of gene names (e.g. 10x's
    ``gene_symbols`` or ``gene_ids``), the parts of compound names (``INS__chr11``,
    ``GRCh38_INS``, ``INS|ENSG00000254647``) and the pinned gene tables
    (:func:`~cellformer.pp.map_gene_names`) are tried, and the one that adds most genes is used. Returns the
    positions, the mapping (``None`` when none was used) and the error that stopped a table
    mapping (tables not installed...), if any.
    """
    target_genes = pd.Index(target_genes).astype(str)
    query_genes = pd.Index(query_genes).astype(str)
    direct = np.asarray(query_genes.get_indexer(target_genes))
    if (direct >= 0).all():
        return direct, None, None
    compound = list(_compound_name_mappings(target_genes, query_genes))
    mixed, error = _id_name_mapping(target_genes, query_genes)
    if not compound and mixed is None and not _may_need_mapping(target_genes, query_genes):
        return direct, None, None
    candidates = [*_var_column_mappings(target_genes, query_var), *compound]
    try:
        candidates.append(map_gene_names(query_genes, target=target_genes))
    except InputError as err:
        logger.debug("Gene names not mapped: %s", err)
        error = err
    candidates += [] if mixed is None else [mixed]  # last: ties go to the mappings above
    best, best_pos = None, direct
    for mapping in candidates:
        pos = combine(direct, mapping, target_genes)
        if (pos >= 0).sum() > (best_pos >= 0).sum():
            best, best_pos = mapping, pos
    return best_pos, best, None if best is not None else error


def _name_columns(var: pd.DataFrame | None):
    """Yield ``(column, names)`` for the string or categorical columns of a ``var`` table."""
    for column in [] if var is None else var.columns:
        values = var[column]
        if values.dtype.kind in "OSUT" or isinstance(values.dtype, pd.CategoricalDtype):
            yield column, pd.Index(values.astype(str))


def _positional_mapping(target_genes: pd.Index, names: pd.Index, usable, source: str):
    """Map query genes (by position) whose entry of ``names`` is ``usable`` onto that name."""
    ids = pd.RangeIndex(len(names)).astype(str)
    return map_gene_names(
        ids,
        target=target_genes,
        table=pd.DataFrame({"i": ids[usable], "name": names[usable]}),
        description=(source, "query genes", "the model's names"),
    )


def _var_column_mappings(target_genes: pd.Index, query_var: pd.DataFrame | None):
    """Yield mappings by the query's ``var`` columns that hold names of the target's kind."""
    for column, names in _name_columns(query_var):
        if names.isin(target_genes).any():
            yield _positional_mapping(
                target_genes, names, np.ones(len(names), dtype=bool), f"var[{column!r}]"
            )


#: Separators of compound gene names: ``INS__chr11`` (CEL-seq2 tables), ``GRCh38_INS`` (Cell
#: Ranger's multi-genome references), ``INS|ENSG00000254647``, ``ENSG00000254647:INS``.
COMPOUND_SEPARATORS = ("__", "|", ":", "_")


def _compound_name_mappings(target_genes: pd.Index, query_genes: pd.Index):
    """Yield mappings by one part of compound query names, where that part names target genes.

    Only separators that most query names contain are tried; a part shared by several query
    genes (``hg19_CD4`` and ``mm10_CD4`` both give ``CD4``) maps none of them.
    """
    sample = query_genes[: min(len(query_genes), 2000)]
    for sep in COMPOUND_SEPARATORS:
        if sample.str.contains(sep, regex=False).mean() <= 0.5:
            continue
        parts = query_genes.str.split(sep, regex=False)
        for k in range(min(3, int(parts.str.len().max()))):
            part = pd.Index(parts.str[k].fillna("").astype(str))
            usable = part.isin(target_genes) & ~part.duplicated(keep=False)
            if not usable.any():
                continue
            source = f"part {k + 1} of names split at {sep!r}"
            yield _positional_mapping(target_genes, part, usable, source)
        return  # the first separator most names contain


_ID = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


def _id_name_mapping(target_genes: pd.Index, query_genes: pd.Index):
    """Map, gene by gene, the Ensembl IDs of a query that also has other names.

    A query named partly by Ensembl IDs and partly by symbols, or by lower-case Ensembl IDs
    (``ensg00000188290``): the IDs (upper-cased, version suffixes ignored) are mapped onto the
    target's names with the pinned tables, the other names are matched as they are. Returns
    ``(mapping or None, the error that stopped the tables or None)``.
    """
    upper = pd.Index(query_genes.str.upper())
    is_id = np.asarray(upper.str.match(_ID.pattern), dtype=bool)
    if not is_id.any() or (is_id.all() and (upper == query_genes).all()):
        return None, None  # no IDs, or IDs only, as written: the usual path
    try:
        mapping = map_gene_names(upper[is_id], target=target_genes)
    except InputError as err:
        return None, err
    if mapping.n_mapped == 0:
        return None, None
    names = np.full(len(query_genes), "", dtype=object)
    names[np.flatnonzero(is_id)[mapping.query_idx]] = np.asarray(mapping.names, dtype=object)
    names = pd.Index(names)
    return _positional_mapping(
        target_genes, names, names != "", "Ensembl IDs among the query's names, gene by gene"
    ), None


def _may_need_mapping(target_genes: pd.Index, query_genes: pd.Index) -> bool:
    """Whether the two sides name genes differently (cheap: no table is read)."""
    if gene_id_kind(target_genes) != gene_id_kind(query_genes):
        return True
    if gene_id_kind(target_genes) == "Ensembl IDs":  # version suffixes may differ
        return bool(
            strip_version(target_genes).isin(strip_version(query_genes)).sum()
            > target_genes.isin(query_genes).sum()
        )
    return False
