"""Learning from the query: reference + unlabelled query cells, with confident pseudo-labels.

Self-training, the simplest of the semi-supervised schemes (scNym's MixMatch builds on it): a
class-balanced logistic regression on the reference labels labels the query; the most confident
share of each predicted class becomes training labels, and the regression is fit again on the
reference and those cells (``rounds`` times). The model asked for (a transformer) is then
trained on the reference cells and the pseudo-labelled query cells together: its linear path
is that adapted regression, and its encoder sees the query's cells. The query's own labels, if
it has any, are never read.
"""

from __future__ import annotations

import hashlib
import logging

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellformer import pp
from cellformer._utils import quiet_training

__all__ = ["ADAPT_LABELS", "adaptation_data", "pseudo_label"]

logger = logging.getLogger("cellformer")

#: ``obs`` column of the training data an adapted model is built on.
ADAPT_LABELS = "cellformer_adapt_label"
#: Label of query cells without a pseudo-label (scvi-tools' unlabelled category).
UNLABELLED = "cellformer:unlabelled query cell"


def _lognorm_block(adata: ad.AnnData, layer, genes: pd.Index, library_key) -> sp.csr_matrix:
    """Return log-normalised values of ``adata`` on ``genes`` (mapped by name).

    Each cell is normalised by its whole-transcriptome library (``library_key``, else its sum
    over all its genes).
    """
    X = pp.get_matrix(adata, layer)
    kind = pp.detect_expression_kind(pp._checks.kind_matrix(adata, layer), layer)
    library = None
    if kind == "counts" and library_key is not None and library_key in adata.obs:
        library = pp.check_library_sizes(adata, library_key)
    alignment = pp.align_genes(genes, adata.var_names, min_coverage=0.0, query_var=adata.var)
    return pp.lognorm_csr(X, kind, alignment, library=library)


def fingerprint(adata: ad.AnnData) -> str:
    """Return a short digest of a query's cells and genes (names), recorded by an adapted model."""
    digest = hashlib.sha256()
    for names in (adata.obs_names, adata.var_names):
        digest.update("\n".join(map(str, names)).encode())
    return digest.hexdigest()[:16]


def adaptation_data(
    reference: ad.AnnData,
    labels_key: str,
    layer: str | None,
    library_size_key: str | None,
    query: ad.AnnData,
    query_layer: str | None,
    query_library_size_key: str | None,
) -> ad.AnnData:
    """Put reference and query cells on the reference's genes, log-normalised, query unlabelled.

    The reference must already be on the genes to train on (the shared ones). Each side is
    normalised with its own library sizes, so a counts reference and a log-normalised query
    (or the other way round) meet on one scale.
    """
    genes = pd.Index(reference.var_names).astype(str)
    ref = _lognorm_block(reference, layer, genes, library_size_key)
    qry = _lognorm_block(query, query_layer, genes, query_library_size_key)
    labels = np.concatenate(
        [reference.obs[labels_key].astype(str).to_numpy(), np.full(query.n_obs, UNLABELLED)]
    )
    obs = pd.DataFrame(
        {
            ADAPT_LABELS: labels,
            "cellformer_origin": ["reference"] * reference.n_obs + ["query"] * query.n_obs,
        },
        index=[f"reference:{n}" for n in reference.obs_names]
        + [f"query:{n}" for n in query.obs_names],
    )
    return ad.AnnData(X=sp.vstack([ref, qry]).tocsr(), obs=obs, var=pd.DataFrame(index=genes))


def pseudo_label(
    data: ad.AnnData, rounds: int = 2, share: float = 0.5, seed: int | None = 0
) -> tuple[np.ndarray, dict]:
    """Label ``data``'s query cells by self-training of class-balanced logistic regression.

    Returns the labels column (reference labels, pseudo-labels for the most confident ``share``
    of each predicted class among the query cells, :data:`UNLABELLED` for the rest) and a
    summary (rounds, pseudo-labelled cells per class).
    """
    from cellformer.model import LinearClassifier

    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}.")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}.")
    query = np.flatnonzero(data.obs["cellformer_origin"].to_numpy() == "query")
    labels = data.obs[ADAPT_LABELS].to_numpy().astype(object)
    cells = data.copy()
    for _ in range(rounds):
        with quiet_training():
            LinearClassifier.setup_anndata(
                cells, labels_key=ADAPT_LABELS, unlabeled_category=UNLABELLED
            )
            model = LinearClassifier(cells)
            model.train(enable_progress_bar=False, seed=seed, novelty=False)
            probs = model.predict(cells, soft=True, key_prefix=None, indices=query)
        top = probs.to_numpy().argmax(1)
        confidence = probs.to_numpy().max(1)
        predicted = np.asarray(model.classes, dtype=object)[top]
        keep = np.zeros(len(query), dtype=bool)
        for c in np.unique(predicted):
            members = np.flatnonzero(predicted == c)
            cut = np.quantile(confidence[members], 1 - share)
            keep[members[confidence[members] >= cut]] = True
        labels = data.obs[ADAPT_LABELS].to_numpy().astype(object)
        labels[query] = np.where(keep, predicted, UNLABELLED)
        cells.obs = pd.DataFrame(
            {ADAPT_LABELS: labels, "cellformer_origin": data.obs["cellformer_origin"].to_numpy()},
            index=data.obs_names,
        )
    counts = pd.Series(labels[query]).value_counts()
    summary = {
        "rounds": rounds,
        "share": share,
        "pseudo_labelled": int((labels[query] != UNLABELLED).sum()),
        "per_class": {str(k): int(v) for k, v in counts.items() if k != UNLABELLED},
    }
    logger.info(
        "Adaptation: %d of %d query cells pseudo-labelled after %d rounds of self-training.",
        summary["pseudo_labelled"],
        len(query),
        rounds,
    )
    return labels, summary
