"""Gene-ID harmonisation between a trained model and a query."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._checks import InputError

__all__ = ["GeneAlignment", "align_genes", "gene_id_kind"]

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
        Model genes absent from the query (they are set to zero).
    """

    model_idx: np.ndarray
    query_idx: np.ndarray
    n_model_genes: int
    missing: list[str]

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
            and bool(np.array_equal(self.query_idx, np.arange(self.n_model_genes)))
        )

    def summary(self) -> str:
        """One line describing the coverage."""
        text = (
            f"Query covers {self.coverage:.1%} of the model's {self.n_model_genes} genes"
            f" ({len(self.missing)} missing"
        )
        if self.missing:
            text += f", set to zero: {', '.join(self.missing[:5])}{', ...' if len(self.missing) > 5 else ''}"
        return text + ")."


def align_genes(model_genes, query_genes, min_coverage: float = 0.5) -> GeneAlignment:
    """Map a query's genes onto a model's genes and report coverage.

    Parameters
    ----------
    model_genes
        Genes the model was trained on, in its order.
    query_genes
        The query's ``var_names``.
    min_coverage
        Below this share of the model's genes present in the query, raise an error.

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
    pos = query_genes.get_indexer(model_genes)
    present = pos >= 0
    alignment = GeneAlignment(
        model_idx=np.flatnonzero(present),
        query_idx=pos[present],
        n_model_genes=len(model_genes),
        missing=list(model_genes[~present]),
    )
    if alignment.coverage < min_coverage:
        model_kind, query_kind = gene_id_kind(model_genes), gene_id_kind(query_genes)
        hint = ""
        if model_kind != query_kind:
            hint = (
                f" The model uses {model_kind} (e.g. {', '.join(model_genes[:3])}) but the query uses "
                f"{query_kind} (e.g. {', '.join(query_genes[:3])}): convert the query's var_names, "
                "e.g. adata.var_names = adata.var['gene_symbols'] or map IDs with a gene annotation table."
            )
        lower_overlap = model_genes.str.upper().isin(query_genes.str.upper()).mean()
        if lower_overlap >= min_coverage:
            hint += (
                " The names match when case is ignored: are model and query from different species? "
                "Map orthologs, or fix the case if it is the same species."
            )
        raise InputError(
            f"Only {alignment.coverage:.1%} of the model's {len(model_genes)} genes "
            f"({len(alignment.model_idx)}) are in the query (need at least {min_coverage:.0%}). "
            f"Missing, e.g.: {', '.join(alignment.missing[:5])}.{hint}"
        )
    if alignment.missing:
        logger.warning(alignment.summary())
    else:
        logger.info(alignment.summary())
    return alignment
