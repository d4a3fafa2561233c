"""Cell types in the Cell Ontology: term IDs for labels, common ancestors, harmonised references.

The ontology is read offline from the release that ``cellxgene-ontology-guide`` (the CELLxGENE
team's package) ships for a pinned CELLxGENE schema: :data:`~cellformer.pp.CL_SCHEMA` 7.1.0, CL v2026-03-26.
A term's ancestors are those the package lists (the ``is_a`` closure the CELLxGENE curators
use), with their distances.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping

import anndata as ad
import numpy as np
import pandas as pd

from cellformer._errors import InputError, MissingDependencyError, ParameterError

__all__ = [
    "CL_SCHEMA",
    "CellOntology",
    "OntologyError",
    "cell_ontology",
    "harmonize_labels",
    "ontology_scores",
]

#: CELLxGENE schema whose Cell Ontology release cellformer reads (CL v2026-03-26).
CL_SCHEMA = "7.1.0"


class OntologyError(InputError):
    """A label, term or ontology version cellformer cannot use; the message says what to do."""


class CellOntology:
    """A Cell Ontology release: labels, synonyms and ancestors of its terms.

    Parameters
    ----------
    terms
        ``{term ID: {"label": str, "ancestors": {ID: distance}, "synonyms": [...],
        "deprecated": bool}}`` (the layout of ``cellxgene-ontology-guide``'s files).
    version
        The release's name (saved with a model that uses it).
    """

    def __init__(self, terms: Mapping[str, Mapping], version: str):
        self.terms = {str(k): dict(v) for k, v in terms.items()}
        self.version = str(version)
        self._by_label: dict[str, str] = {}
        synonyms: dict[str, set[str]] = {}
        for term, meta in self.terms.items():
            if meta.get("deprecated") in (True, "True"):
                continue
            self._by_label.setdefault(str(meta.get("label", "")).lower(), term)
            for name in meta.get("synonyms") or []:
                synonyms.setdefault(str(name).lower(), set()).add(term)
        self._by_synonym = synonyms

    def __repr__(self) -> str:
        return f"CellOntology({self.version}, {len(self.terms)} terms)"

    def label(self, term: str) -> str:
        """Return the label of ``term`` (a CL ID)."""
        return str(self._meta(term)["label"])

    def _meta(self, term: str) -> dict:
        if term not in self.terms:
            raise OntologyError(
                f"{term!r} is not a term of the Cell Ontology {self.version} (IDs look like "
                "'CL:0000236'; look a cell type up at https://www.ebi.ac.uk/ols4/ontologies/cl)."
            )
        return self.terms[term]

    def check_current(self, term: str) -> None:
        """Refuse an obsolete term, naming its replacement (or the terms to consider)."""
        meta = self._meta(term)
        if meta.get("deprecated") not in (True, "True"):
            return
        replaced = meta.get("replaced_by")
        consider = [str(t) for t in meta.get("consider") or []]
        if replaced and str(replaced) in self.terms:
            hint = f"use its replacement {replaced} ({self.label(str(replaced))})"
        elif replaced:
            hint = f"it was replaced by {replaced}, outside the Cell Ontology: map the label to a CL term"
        elif consider:
            hint = "consider " + ", ".join(
                f"{t} ({self.label(t)})" if t in self.terms else t for t in consider
            )
        else:
            hint = "map the label to a current term"
        raise OntologyError(
            f"{term} ({meta.get('label')}) is obsolete in the Cell Ontology {self.version}: {hint}."
        )

    def ancestors(self, term: str, include_self: bool = True) -> dict[str, int]:
        """Return ``{ancestor: distance}`` of ``term`` (itself at distance 0 when included)."""
        found = {str(k): int(v) for k, v in (self._meta(term).get("ancestors") or {}).items()}
        return {term: 0, **found} if include_self else found

    def depth(self, term: str) -> int:
        """Return the length of the longest ``is_a`` path from ``term`` to a root."""
        return max(self.ancestors(term, include_self=False).values(), default=0)

    def is_ancestor(self, ancestor: str, term: str) -> bool:
        """Whether ``ancestor`` is ``term`` or one of its ancestors."""
        return ancestor in self.ancestors(term)

    def common_ancestor(self, terms: Iterable[str]) -> str:
        """Return the most specific common ancestor of ``terms`` (a term itself if it is one).

        Among the terms every one of ``terms`` descends from, the ones no other common
        ancestor descends from; ties go to the smallest total distance, then the ID.
        """
        terms = list(dict.fromkeys(terms))
        if not terms:
            raise ParameterError("common_ancestor needs at least one term.")
        lines = [self.ancestors(t) for t in terms]
        common = set(lines[0]).intersection(*lines[1:])
        if not common:
            raise OntologyError(f"The terms {terms} have no common ancestor in the ontology.")
        lowest = [
            c
            for c in common
            if not any(c != o and c in self.ancestors(o, include_self=False) for o in common)
        ]
        return min(lowest, key=lambda c: (sum(line[c] for line in lines), c))

    def resolve(self, name: str) -> str | None:
        """Return the term of a CL ID, an exact label or an exact synonym (case ignored).

        ``None`` when nothing matches; a synonym of several terms is an error.
        """
        name = str(name).strip()
        if name in self.terms:
            self.check_current(name)  # an obsolete ID is an error that names its replacement
            return name
        key = name.lower()
        if key in self._by_label:
            return self._by_label[key]
        matches = self._by_synonym.get(key, set())
        if len(matches) > 1:
            listed = ", ".join(f"{t} ({self.label(t)})" for t in sorted(matches))
            raise OntologyError(
                f"The label {name!r} is a synonym of several terms: {listed}. Say which one: "
                f"label_ontology={{{name!r}: 'CL:...'}}."
            )
        return next(iter(matches), None)

    def map_labels(
        self, labels: Iterable[str], label_ontology: Mapping[str, str] | None = None
    ) -> tuple[dict[str, str], list[str]]:
        """Map labels to terms: ``label_ontology`` first, then :meth:`resolve`.

        Returns ``({label: term}, [unmatched labels])``; a term in ``label_ontology`` that
        the ontology lacks is an error.
        """
        given = dict(label_ontology or {})
        mapping, unmatched = {}, []
        for label in dict.fromkeys(map(str, labels)):
            if label in given:
                term = str(given[label])
                self.check_current(term)  # an unknown or obsolete ID is an error
                mapping[label] = term
                continue
            term = self.resolve(label)
            if term is None:
                unmatched.append(label)
            else:
                mapping[label] = term
        return mapping, unmatched


@functools.lru_cache(maxsize=2)
def cell_ontology(schema_version: str = CL_SCHEMA) -> CellOntology:
    """Return the Cell Ontology of a CELLxGENE schema (default the pinned :data:`~cellformer.pp.CL_SCHEMA`).

    Offline: the release ships inside ``cellxgene-ontology-guide``
    (``pip install "cellformer[ontology]"``).
    """
    try:
        from cellxgene_ontology_guide.supported_versions import CXGSchema
    except ImportError as err:
        raise MissingDependencyError(
            "The Cell Ontology comes from the optional dependency cellxgene-ontology-guide: "
            'pip install "cellformer[ontology]".'
        ) from err
    try:
        schema = CXGSchema(version=schema_version)
    except ValueError as err:
        raise OntologyError(
            f"The installed cellxgene-ontology-guide has no CELLxGENE schema {schema_version!r} "
            f"({err}); install the version that ships it, or use {CL_SCHEMA!r}."
        ) from err
    version = schema.supported_ontologies["CL"]["version"]
    return CellOntology(schema.ontology("CL"), version=f"CL {version}")


def harmonize_labels(
    ref_a: ad.AnnData | Iterable[str],
    ref_b: ad.AnnData | Iterable[str],
    labels_key: str | None = None,
    labels_key_b: str | None = None,
    label_ontology: Mapping[str, str] | None = None,
    ontology: CellOntology | None = None,
) -> pd.DataFrame:
    """Relate the labels of two references through the Cell Ontology.

    Every label of ``ref_a`` against every label of ``ref_b`` whose terms are related: one
    row per pair that is ``"equal"`` (the same term), ``"a within b"`` (a's term descends from
    b's) or ``"b within a"``; labels without a term get a row ``"unmatched"``. Use it to score a
    reference → query evaluation across naming schemes (a prediction "within" the truth's term
    or equal to it).

    Parameters
    ----------
    ref_a, ref_b
        AnnData (labels in ``obs[labels_key]`` / ``obs[labels_key_b]``) or lists of labels.
    labels_key, labels_key_b
        The label columns (``labels_key_b`` defaults to ``labels_key``).
    label_ontology
        ``{label: CL ID}`` for labels of either reference that are not CL labels or synonyms.
    ontology
        Default :func:`cell_ontology`.

    Returns
    -------
    A DataFrame with ``label_a``, ``term_a``, ``label_b``, ``term_b``, ``relation``.
    """
    ontology = ontology or cell_ontology()

    def labels_of(ref, key, which):
        if isinstance(ref, ad.AnnData):
            if key is None or key not in ref.obs:
                raise InputError(
                    f"harmonize_labels: name the label column of reference {which} "
                    f"(columns: {list(ref.obs.columns)})."
                )
            return ref.obs[key].astype(str).unique().tolist()
        if isinstance(ref, str):
            raise InputError("harmonize_labels takes AnnData or lists of labels, not a string.")
        return list(dict.fromkeys(map(str, ref)))

    a = labels_of(ref_a, labels_key, "a")
    b = labels_of(ref_b, labels_key_b or labels_key, "b")
    map_a, unmatched_a = ontology.map_labels(a, label_ontology)
    map_b, unmatched_b = ontology.map_labels(b, label_ontology)
    rows = []
    for la, ta in map_a.items():
        for lb, tb in map_b.items():
            if ta == tb:
                relation = "equal"
            elif ontology.is_ancestor(tb, ta):
                relation = "a within b"
            elif ontology.is_ancestor(ta, tb):
                relation = "b within a"
            else:
                continue
            rows.append((la, ta, lb, tb, relation))
    rows += [(la, None, None, None, "unmatched") for la in unmatched_a]
    rows += [(None, None, lb, None, "unmatched") for lb in unmatched_b]
    return pd.DataFrame(rows, columns=["label_a", "term_a", "label_b", "term_b", "relation"])


def ontology_scores(
    truth: Iterable[str],
    predicted: Iterable[str],
    label_terms: Mapping[str, str],
    ontology: CellOntology,
    unknown: str = "Unknown",
) -> dict[str, float]:
    """Score predictions that may be coarser terms against the truth, through the ontology.

    ``predicted`` holds class labels or CL IDs (coarse answers). Returns ``ontology_accuracy``
    (the prediction's term is the truth's term or one of its ancestors), ``exact_accuracy``,
    ``mean_depth`` of the answered terms, and ``unknown_rate``. Truth labels without a term are
    left out.
    """
    truth = np.asarray(list(map(str, truth)), dtype=object)
    predicted = np.asarray(list(map(str, predicted)), dtype=object)
    correct, exact, depths, unknown_n, n = 0, 0, [], 0, 0
    for t, p in zip(truth, predicted, strict=True):
        t_term = label_terms.get(t, t if t in ontology.terms else None)
        if t_term is None:
            continue
        n += 1
        if p == unknown:
            unknown_n += 1
            continue
        p_term = label_terms.get(p, p if p in ontology.terms else None)
        if p_term is None:
            continue
        depths.append(ontology.depth(p_term))
        exact += p_term == t_term
        correct += ontology.is_ancestor(p_term, t_term)
    n = max(n, 1)
    return {
        "ontology_accuracy": correct / n,
        "exact_accuracy": exact / n,
        "mean_depth": float(np.mean(depths)) if depths else float("nan"),
        "unknown_rate": unknown_n / n,
    }
