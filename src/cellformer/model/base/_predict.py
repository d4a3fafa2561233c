"""Prediction as a pipeline: one pass over the query, plain post-steps, one writer.

:meth:`CellformerModel.predict` reads as these steps: :func:`check_options`,
:func:`predictive_passes` (the chunked forward passes, into a :class:`Prediction`), the
post-steps :func:`reject`, :func:`label_empty_cells`, :func:`vote` and :func:`coarse_answers_of`,
then :func:`write` (which claims the ``obs``/``obsm`` keys once) and :func:`returned`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import _core
from cellformer._errors import ParameterError
from cellformer._utils import check_positive, check_probability
from cellformer.nn import mc_sampling, predictive_summary

from ._outputs import check_indices, claim_keys, full_column, write_latent

__all__ = ["PREDICTION_COLUMNS", "UNKNOWN", "Prediction", "predictive_passes"]

logger = logging.getLogger("cellformer")

#: The label of rejected cells.
UNKNOWN = "Unknown"
#: Every ``obs`` column a prediction writes after its prefix: a new prediction under the same
#: prefix clears them all, so no column of an earlier model is left beside new predictions.
PREDICTION_COLUMNS = (
    "prediction",
    "confidence",
    "entropy",
    "mutual_info",
    "novelty",
    "unknown",
    "over_clustering",
    "majority_voting",
    "majority_voting_confidence",
    "prediction_ontology_term_id",
    "prediction_coarse",
    "prediction_coarse_ontology_term_id",
)


@dataclass
class Prediction:
    """What one pass over a query gives, and what the post-steps add to it.

    Arrays have one row per predicted cell (``rows`` of ``adata``, all cells when ``None``).
    """

    adata: ad.AnnData
    rows: np.ndarray | None
    #: mean probabilities (cells × classes) and their std over Monte-Carlo samples
    probs: np.ndarray
    std: np.ndarray
    entropy: np.ndarray
    mutual_info: np.ndarray
    novelty: np.ndarray
    #: cells without any expression on the model's genes
    empty: np.ndarray
    #: index of each cell's predicted class
    top: np.ndarray
    confidence: np.ndarray
    #: whether Monte-Carlo samples were drawn (``mutual_info`` is then written)
    sampled: bool
    latent: np.ndarray | None
    labels: np.ndarray | None = None
    #: cells the thresholds fit in training reject (``None``: none were fit)
    unknown: np.ndarray | None = None
    #: whether a label may be ``"Unknown"`` (a category of the written columns)
    may_be_unknown: bool = False
    clusters: np.ndarray | None = None
    voted: np.ndarray | None = None
    #: per cell, the share of its cluster's cells whose own label is the voted one
    vote_confidence: np.ndarray | None = None
    #: coarse answers and their terms
    coarse: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def obs_names(self) -> pd.Index:
        names = self.adata.obs_names
        return names if self.rows is None else names[self.rows]


def check_options(
    model,
    soft: bool,
    return_std: bool,
    mc_samples: int | None,
    mc_dropout: bool,
    reject_unknown: bool,
    ontology_threshold: float | None,
    ontology_mass: float,
    key_prefix: str | None,
) -> int | None:
    """Check ``predict``'s options before any work; return the Monte-Carlo samples to draw."""
    if return_std and not soft:
        raise ParameterError("return_std=True goes with soft=True (probabilities).")
    check_positive(mc_samples=mc_samples)
    check_probability(closed=True, ontology_threshold=ontology_threshold)
    if not (isinstance(ontology_mass, (int, float)) and 0 < ontology_mass <= 1):  # NaN fails
        raise ParameterError(f"ontology_mass must be in (0, 1], got {ontology_mass!r}.")
    if reject_unknown and not np.isfinite(float(model.module.unknown_threshold)):
        raise ParameterError(
            "No Unknown threshold: train with a validation split (validation_size > 0)."
        )
    _core.check_key_prefix(key_prefix)
    if mc_samples is None and mc_dropout:
        return 30
    return model.mc_samples_default if mc_samples is None else mc_samples


def predictive_passes(
    model,
    adata,
    layer,
    batch_size: int,
    mc_samples: int | None,
    mc_dropout: bool,
    indices=None,
    with_latent: bool = False,
    **options,
) -> Prediction:
    """Mean probabilities, their std, entropy, mutual information and confidence per cell.

    Also ``empty``: cells without any measured expression on the model's genes; with
    ``with_latent``, ``latent``: the latent representation, from the same pass over the data.
    With ``indices``, for those cells only. ``options``: see ``CellformerModel._forward_chunks``.
    """
    check_positive(mc_samples=mc_samples)
    n = 1 if mc_samples is None else int(mc_samples)
    sampled = mc_samples is not None or mc_dropout
    module = model.module
    one_vs_rest = getattr(module, "one_vs_rest", False)

    def fn(x, extra):
        inference = None
        if not sampled:
            inference = module.inference(x, **extra)
            logits = inference["logits"][None]
        else:
            with mc_sampling(module, dropout=mc_dropout):
                logits = torch.stack([module.inference(x, **extra)["logits"] for _ in range(n)])
        # one-vs-rest probabilities saturate at 1: such modules compute in float64, and the
        # label is the top score (as CellTypist), not the top of tied probabilities
        logits = (logits if one_vs_rest else logits.float()) / module.temperature
        s = predictive_summary(logits, one_vs_rest=one_vs_rest)
        top = (logits.mean(0) if one_vs_rest else s["probs"]).argmax(-1)
        empty = torch.nan_to_num(x, nan=0.0).abs().sum(dim=1) == 0
        columns = [s["entropy"], s["mutual_info"], module.novelty(x), empty, top]
        columns = torch.stack([c.to(s["probs"].dtype) for c in columns], dim=1)
        parts = [s["probs"], s["std"], columns]
        if with_latent:
            parts.append(model._latent_from_inference(x, extra, inference).to(s["probs"].dtype))
        return torch.cat(parts, dim=1)

    adata, out = model._forward_chunks(adata, layer, batch_size, fn, indices=indices, **options)
    k = model.n_classes
    probs = out[:, :k]
    return Prediction(
        adata=adata,
        rows=check_indices(indices, adata.n_obs),
        probs=probs,
        std=out[:, k : 2 * k],
        entropy=out[:, 2 * k],
        mutual_info=out[:, 2 * k + 1],
        novelty=out[:, 2 * k + 2],
        empty=out[:, 2 * k + 3] > 0.5,
        top=out[:, 2 * k + 4].astype(np.int64),
        confidence=probs.max(axis=1),
        sampled=sampled,
        latent=out[:, 2 * k + 5 :].astype(np.float32) if with_latent else None,
    )


def unknown_cells(module, confidence: np.ndarray, novelty: np.ndarray) -> np.ndarray | None:
    """Cells rejected by the thresholds fit in training (``None`` when none was fit)."""
    threshold = float(module.unknown_threshold)
    if not np.isfinite(threshold):
        return None
    unknown = confidence < threshold
    novelty_threshold = float(module.novelty.threshold)
    if np.isfinite(novelty_threshold):
        unknown |= novelty > novelty_threshold
    return unknown


def reject(model, p: Prediction, reject_unknown: bool) -> None:
    """Name each cell's class; mark the cells the thresholds reject (relabel them on request)."""
    p.confidence = p.confidence.astype(np.float32)
    p.labels = np.asarray(model.classes, dtype=object)[p.top]
    p.unknown = unknown_cells(model.module, p.confidence, p.novelty)
    p.may_be_unknown = reject_unknown
    if reject_unknown:
        p.labels[p.unknown] = UNKNOWN


def label_empty_cells(p: Prediction) -> None:
    """Cells without expression on the model's genes: ``"Unknown"``, NaN confidence, warned."""
    if not p.empty.any():
        return
    logger.warning(
        "%d of %d cells have no expression on the model's genes: labelled %r, confidence NaN.",
        int(p.empty.sum()),
        len(p.empty),
        UNKNOWN,
    )
    p.labels[p.empty] = UNKNOWN
    p.confidence[p.empty] = np.nan
    p.probs = p.probs.copy()
    p.probs[p.empty] = np.nan
    if p.unknown is not None:
        p.unknown = p.unknown | p.empty
    p.may_be_unknown = True


def vote(model, p: Prediction, over_clustering, latent_of) -> None:
    """Majority voting in the query's clusters: given (a column, an array) or over-clustered.

    ``latent_of()``: the latent of the predicted cells, when it was not computed in the pass.
    """
    from ._voting import majority_vote, over_cluster

    if over_clustering is None:
        clusters = over_cluster(p.latent if p.latent is not None else latent_of())
    elif isinstance(over_clustering, str):
        if over_clustering not in p.adata.obs:
            raise _core.InputError(f"over_clustering={over_clustering!r} is not a column of obs.")
        clusters = p.adata.obs[over_clustering].astype(str).to_numpy()
        clusters = clusters if p.rows is None else clusters[p.rows]
    else:
        clusters = np.asarray(over_clustering).astype(str)
        if len(clusters) != len(p.labels):
            raise _core.InputError(
                f"over_clustering has {len(clusters)} values for {len(p.labels)} cells."
            )
    p.clusters, p.voted = clusters, majority_vote(p.labels, clusters)
    p.vote_confidence = vote_confidence(p.labels, clusters, p.voted)


def vote_confidence(labels, clusters, voted) -> np.ndarray:
    """Per cell: the share of its cluster's cells whose own label is the cluster's voted label.

    1 where the cluster is unanimous; near ``1 / n_labels`` where the vote was close. Cells of
    one cluster share the value (float32, in [0, 1]).
    """
    agree = pd.Series(np.asarray(labels).astype(str) == np.asarray(voted).astype(str))
    share = agree.groupby(np.asarray(clusters)).transform("mean")
    return share.to_numpy(dtype=np.float32)


def write(model, p: Prediction, key_prefix: str, ontology: bool) -> None:
    """Write a prediction to ``adata.obs`` (and the latent to ``obsm``) under ``key_prefix``.

    Keys a user holds are refused before anything is written; columns of an earlier
    prediction under the same prefix are removed first.
    """
    adata, obs = p.adata, p.adata.obs
    keys = [f"{key_prefix}_{c}" for c in PREDICTION_COLUMNS]
    if p.latent is not None:
        claim_keys(adata, "obsm", [f"X_{key_prefix}"])
    claim_keys(adata, "obs", keys)
    obs.drop(columns=[k for k in keys if k in obs], inplace=True)  # cellformer's own
    categories = [*model.classes, UNKNOWN] if p.may_be_unknown else model.classes

    def column(name, values, categories=None):
        obs[f"{key_prefix}_{name}"] = full_column(values, p.rows, adata.n_obs, categories)

    column("prediction", p.labels, categories)
    column("confidence", p.confidence)
    column("entropy", p.entropy.astype(np.float32))
    if p.sampled:
        column("mutual_info", p.mutual_info.astype(np.float32))
    if model.module.novelty.is_fitted:
        column("novelty", p.novelty.astype(np.float32))
    if p.unknown is not None:
        column("unknown", p.unknown)
    if p.voted is not None:
        column("over_clustering", p.clusters, sorted(set(p.clusters)))
        column("majority_voting", p.voted, categories)
        column("majority_voting_confidence", p.vote_confidence)
    if model.label_ontology_ is not None or ontology:
        terms = (model.label_ontology_ or {}).get("terms", {})
        fine = np.array([terms.get(str(c)) for c in p.labels], dtype=object)
        column("prediction_ontology_term_id", fine, sorted({t for t in fine if t}))
    if p.coarse is not None:
        column("prediction_coarse", p.coarse[0], sorted(set(p.coarse[0])))
        column(
            "prediction_coarse_ontology_term_id", p.coarse[1], sorted({t for t in p.coarse[1] if t})
        )
    if p.latent is not None:
        write_latent(adata, p.latent, key_prefix, p.rows)


def returned(model, p: Prediction, soft: bool, return_std: bool):
    """Return labels, or probabilities (with their std) as DataFrames, as ``predict`` does."""
    if not soft:
        return p.labels
    frame = pd.DataFrame(p.probs, index=p.obs_names.copy(), columns=model.classes)
    if return_std:
        return frame, pd.DataFrame(p.std, index=frame.index, columns=model.classes)
    return frame
