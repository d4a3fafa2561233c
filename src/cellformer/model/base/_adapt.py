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
import torch

from cellformer import _core, pp
from cellformer._core.lbfgs import fit_balanced_logistic
from cellformer._errors import ParameterError
from cellformer._utils import check_positive, check_types

from ._setup import internal_setup

__all__ = ["ADAPT_LABELS", "adaptation_data", "pseudo_label", "rebuild_on_unlabeled"]

logger = logging.getLogger("cellformer")

#: ``obs`` column of the training data an adapted model is built on.
ADAPT_LABELS = "cellformer_adapt_label"
#: The schema of ``adapt_options`` (see :func:`rebuild_on_unlabeled`).
ADAPT_OPTIONS = {"layer": str | None, "library_size_key": str | None, "rounds": int, "share": float}
#: Label of query cells without a pseudo-label (scvi-tools' unlabelled category).
UNLABELLED = "cellformer:unlabelled query cell"


def _lognorm_block(adata: ad.AnnData, layer, genes: pd.Index, library_key) -> sp.csr_matrix:
    """Return log-normalised values of ``adata`` on ``genes`` (mapped by name).

    Each cell is normalised by its whole-transcriptome library (``library_key``, else its sum
    over all its genes).
    """
    X = _core.get_matrix(adata, layer)
    kind = _core.detect_expression_kind(_core.kind_matrix(adata, layer), layer)
    library = None
    if kind == "counts" and library_key is not None and library_key in adata.obs:
        library = _core.check_library_sizes(adata, library_key)
    alignment = _core.align_genes(genes, adata.var_names, min_coverage=0.0, query_var=adata.var)
    return _core.lognorm_csr(X, kind, alignment, library=library)


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


def _balanced_regression(
    X: sp.csr_matrix, labels: np.ndarray, seed: int | None, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Fit class-balanced logistic regression on the labelled cells; probabilities of ``rows``.

    The :class:`~cellformer.model.LinearClassifier` baseline's fit on log-normalised values:
    genes standardised with the labelled cells' statistics, ``C`` by cross-validation.
    Returns the probabilities (``rows`` × classes) and the classes (sorted).
    """
    labelled = np.flatnonzero(labels != UNLABELLED)
    classes, y = np.unique(labels[labelled].astype(str), return_inverse=True)
    mean, std = _core.fit_scaler(X, "lognorm", labelled)

    def standardised(idx):
        dense = torch.as_tensor(X[idx].toarray())
        return (dense - torch.as_tensor(mean)) / torch.as_tensor(std)

    W, b, _, _ = fit_balanced_logistic(standardised(labelled), y, len(classes), seed=seed)
    with torch.no_grad():
        probs = torch.softmax(standardised(rows) @ W.T + b, dim=1).numpy()
    return probs, classes.astype(object)


def pseudo_label(
    data: ad.AnnData, rounds: int = 2, share: float = 0.5, seed: int | None = 0
) -> tuple[np.ndarray, dict]:
    """Label ``data``'s query cells by self-training of class-balanced logistic regression.

    Returns the labels column (reference labels, pseudo-labels for the most confident ``share``
    of each predicted class among the query cells, :data:`UNLABELLED` for the rest) and a
    summary (rounds, pseudo-labelled cells per class).
    """
    if rounds < 1:
        raise ParameterError(f"rounds must be at least 1, got {rounds}.")
    if not 0 < share <= 1:
        raise ParameterError(f"share must be in (0, 1], got {share}.")
    query = np.flatnonzero(data.obs["cellformer_origin"].to_numpy() == "query")
    labels = data.obs[ADAPT_LABELS].to_numpy().astype(object)
    X = sp.csr_matrix(data.X, dtype=np.float32)
    for _ in range(rounds):
        probs, classes = _balanced_regression(X, labels, seed, query)
        top = probs.argmax(1)
        confidence = probs.max(1)
        predicted = classes[top]
        keep = np.zeros(len(query), dtype=bool)
        for c in np.unique(predicted):
            members = np.flatnonzero(predicted == c)
            cut = np.quantile(confidence[members], 1 - share)
            keep[members[confidence[members] >= cut]] = True
        labels = data.obs[ADAPT_LABELS].to_numpy().astype(object)
        labels[query] = np.where(keep, predicted, UNLABELLED)
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


def rebuild_on_unlabeled(model, unlabeled, seed: int | None, options: dict | None = None) -> None:
    """Rebuild an untrained ``model`` in place on its reference plus pseudo-labelled cells.

    ``unlabeled``: an AnnData of query cells, or ``True`` for the registered data's cells under
    ``setup_anndata``'s ``unlabeled_category``. The model's genes stay; the training data becomes
    the reference and the unlabelled cells, log-normalised on those genes (``model.adata`` is
    that combined AnnData afterwards); the query's own labels, if any, are never read.
    ``options``: ``layer`` and ``library_size_key`` of the query, ``rounds`` and ``share`` of
    :func:`pseudo_label`. Pretrained weights (a checkpoint, a pretrained encoder) are kept.
    """
    options = dict(options or {})
    check_types(options, ADAPT_OPTIONS, "adapt_options")
    check_positive(rounds=options.get("rounds"))
    if "share" in options and not 0 < options["share"] <= 1:
        raise ParameterError(f"adapt_options: share must be in (0, 1], got {options['share']}.")
    if model.is_trained_:
        raise _core.InputError(
            "train(unlabeled=...) builds the model again on the reference and the unlabelled "
            "cells: call it on a new, untrained model (the same arguments), not after train()."
        )
    if getattr(model, "_needs_counts", False):
        raise _core.InputError(
            f"{type(model).__name__} tokenises raw counts, but learning from unlabelled cells "
            "trains on log-normalised reference and query cells; use a CellTransformer, "
            "LinearClassifier or ScGPTClassifier."
        )
    args = model._setup_args
    if args.get("batch_key") is not None or "rna_layer" in args:
        raise _core.InputError(
            "train(unlabeled=...) trains on the reference and the query as one data set without "
            "batch codes or other modalities: set up the reference without batch_key (and as an "
            "AnnData, not a MuData)."
        )
    reference = model.adata
    labels_key = args["labels_key"]
    registered_unlabelled = args.get("unlabeled_category")
    is_unlabelled = (
        reference.obs[labels_key].astype(str).to_numpy() == str(registered_unlabelled)
        if registered_unlabelled is not None
        else np.zeros(reference.n_obs, dtype=bool)
    )
    if unlabeled is True:
        if not is_unlabelled.any():
            raise _core.InputError(
                "unlabeled=True learns from the registered cells labelled with setup_anndata's "
                f"unlabeled_category, but obs[{labels_key!r}] has none: pass unlabeled=query "
                "(an AnnData) instead."
            )
        query = reference[is_unlabelled]
        labelled = reference[~is_unlabelled]
        layer, key = args.get("layer"), args.get("library_size_key")
    else:
        if not isinstance(unlabeled, ad.AnnData):
            raise _core.InputError(
                f"unlabeled must be an AnnData of query cells or True, got "
                f"{type(unlabeled).__name__}."
            )
        query = unlabeled
        labelled = reference
        layer, key = options.get("layer"), options.get("library_size_key")
        pp.validate_anndata(query, layer)
        if key is not None and key not in query.obs:
            raise _core.InputError(
                f"adapt_options: library_size_key={key!r} is not a column of the unlabelled "
                f"cells' obs (columns: {list(query.obs.columns)[:10]})."
            )
        overlap = pp.gene_overlap(labelled, query)
        if overlap.n_shared == 0:
            raise _core.InputError(
                "The reference and the unlabelled cells share no gene: map one to the other's "
                "gene names (cf.pp.map_genes) before training."
            )
        if overlap.n_shared < labelled.n_vars:
            logger.warning(
                "%d of the model's %d genes are not measured in the unlabelled cells and count "
                "as 0 there in training: build the model on the shared genes (cf.pp."
                "gene_overlap(...).shared), as cf.tl.annotate(adapt=True) does.",
                labelled.n_vars - overlap.n_shared,
                labelled.n_vars,
            )
    data = adaptation_data(
        labelled, labels_key, args.get("layer"), args.get("library_size_key"), query, layer, key
    )
    data.obs[ADAPT_LABELS], summary = pseudo_label(
        data, rounds=options.get("rounds", 2), share=options.get("share", 0.5), seed=seed
    )
    summary.update(n_cells=query.n_obs, n_genes=query.n_vars, fingerprint=fingerprint(query))
    pretrained = model.module.state_dict() if model._holds_pretrained_weights else None
    trainable = {n: p.requires_grad for n, p in model.module.named_parameters()}
    lr_decay = getattr(model.module, "lr_decay", None)  # from_pretrained's layer-wise rates
    kept = {k: getattr(model, k) for k in vars(model) if k in model._kept_on_rebuild}
    params = model.init_params_
    kwargs = dict(params.get("non_kwargs", {}))
    for options in params.get("kwargs", {}).values():  # scvi-tools keeps **kwargs by their name
        kwargs.update(options)
    for internal in ("registry", "input_kind"):
        kwargs.pop(internal, None)
    with internal_setup():
        type(model).setup_anndata(data, labels_key=ADAPT_LABELS, unlabeled_category=UNLABELLED)
    type(model).__init__(model, data, **kwargs)
    vars(model).update(kept)
    if pretrained is not None:
        model.module.load_state_dict(pretrained)
        for name, p in model.module.named_parameters():
            p.requires_grad_(trainable.get(name, True))
    if lr_decay is not None:
        model.module.lr_decay = lr_decay
    model.adapted_to_ = summary
