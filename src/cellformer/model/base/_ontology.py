"""Cell Ontology terms for a model's classes, and coarser correct answers for unsure cells."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np

from cellformer._errors import ParameterError
from cellformer.pp import CellOntology, OntologyError, cell_ontology

__all__ = ["coarse_answers", "coarse_answers_of", "set_label_ontology"]

logger = logging.getLogger("cellformer")


def coarse_answers(
    probs: np.ndarray,
    classes: list[str],
    class_terms: Mapping[str, str],
    ontology: CellOntology,
    threshold: float,
    mass: float = 0.9,
    unknown: str = "Unknown",
) -> tuple[np.ndarray, np.ndarray]:
    """Return each cell's answer and its term: fine when sure, else a common ancestor.

    A cell whose top probability is at least ``threshold`` keeps its top class. Otherwise the
    smallest set of classes (most probable first) holding at least ``mass`` of its
    probability is replaced by their most specific common ancestor in the ontology (its
    label); a set with a class without a term gives ``unknown``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    order = np.argsort(-probs, axis=1, kind="stable")
    sorted_probs = np.take_along_axis(probs, order, axis=1)
    answers = np.empty(len(probs), dtype=object)
    terms = np.empty(len(probs), dtype=object)
    cache: dict[tuple[int, ...], tuple[str, str | None]] = {}
    for i in range(len(probs)):
        if not np.isfinite(sorted_probs[i, 0]):
            answers[i], terms[i] = unknown, None
            continue
        if sorted_probs[i, 0] >= threshold:
            k = 1
        else:
            k = int(np.searchsorted(np.cumsum(sorted_probs[i]), mass - 1e-12) + 1)
            k = min(k, len(classes))
        members = tuple(sorted(order[i, :k]))
        if members not in cache:
            names = [classes[j] for j in members]
            if k == 1:
                cache[members] = (names[0], class_terms.get(names[0]))
            elif all(n in class_terms for n in names):
                term = ontology.common_ancestor(class_terms[n] for n in names)
                cache[members] = (ontology.label(term), term)
            else:
                cache[members] = (unknown, None)
        answers[i], terms[i] = cache[members]
    return answers, terms


def set_label_ontology(
    model, label_ontology: Mapping[str, str] | None = None, ontology: CellOntology | None = None
) -> dict[str, str]:
    """Map ``model``'s classes to Cell Ontology terms and keep the mapping on it.

    See :meth:`~cellformer.model.CellformerModel.set_label_ontology`.
    """
    ontology = ontology or cell_ontology()
    unknown = sorted(set(label_ontology or {}) - set(model.classes))
    if unknown:
        raise OntologyError(
            f"label_ontology names labels the model does not predict: {unknown[:5]} (its "
            f"classes: {list(model.classes)[:10]})."
        )
    terms, unmatched = ontology.map_labels(model.classes, label_ontology)
    if unmatched:
        logger.warning(
            "%d of %d classes have no Cell Ontology term (%s): name them with "
            "label_ontology={label: 'CL:...'}.",
            len(unmatched),
            len(model.classes),
            ", ".join(map(repr, unmatched)),
        )
    model.label_ontology_ = {"version": ontology.version, "terms": terms}
    return terms


def ontology_for_prediction(model) -> tuple[CellOntology, dict[str, str]]:
    """Return the ontology and ``{class: term}`` of ``model`` (mapped on first use, version checked)."""
    if model.label_ontology_ is None:
        model.set_label_ontology()
    ontology = cell_ontology()
    saved = model.label_ontology_["version"]
    if saved != ontology.version:
        raise OntologyError(
            f"This model's classes were mapped to {saved}, but cellformer reads "
            f"{ontology.version}: map them again with model.set_label_ontology(...)."
        )
    return ontology, dict(model.label_ontology_["terms"])


def coarse_answers_of(
    model, probs: np.ndarray, threshold: float | None, mass: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`coarse_answers` for ``model``'s classes; ``threshold`` defaults to its Unknown one."""
    if not 0 < mass <= 1:
        raise ParameterError(f"ontology_mass must be in (0, 1], got {mass}.")
    if threshold is None:
        fitted = float(model.module.unknown_threshold)
        threshold = fitted if np.isfinite(fitted) else 0.5
    ontology, terms = ontology_for_prediction(model)
    return coarse_answers(probs, list(model.classes), terms, ontology, threshold, mass)
