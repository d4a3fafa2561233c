"""Reading CellTypist models (``celltypist.train(...).write(path)`` and the published ``.pkl``)."""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from cellformer import _core

from .base._files import NUMPY_GLOBALS, restricted_load

__all__ = ["CelltypistParts", "read_celltypist", "source_name"]

logger = logging.getLogger("cellformer")

#: CellTypist clips standardised values above this before the linear scores.
CELLTYPIST_CLIP = 10.0

_SGD_LOSSES = (
    "Hinge",
    "Log",
    "ModifiedHuber",
    "SquaredHinge",
    "SquaredLoss",
    "Huber",
    "EpsilonInsensitive",
    "SquaredEpsilonInsensitive",
)
#: Everything a CellTypist model's pickle may import: its scikit-learn classifier and scaler
#: (module paths of old and new scikit-learn releases), the loss object an SGDClassifier keeps,
#: numpy arrays and scalars, and pickle's own helper for objects of protocols 0 and 1.
CELLTYPIST_GLOBALS = frozenset(
    {
        *NUMPY_GLOBALS,
        *(
            (m, "LogisticRegression")
            for m in ("sklearn.linear_model._logistic", "sklearn.linear_model.logistic")
        ),
        *(
            (m, "SGDClassifier")
            for m in (
                "sklearn.linear_model._stochastic_gradient",
                "sklearn.linear_model.stochastic_gradient",
            )
        ),
        *(
            (m, "StandardScaler")
            for m in ("sklearn.preprocessing._data", "sklearn.preprocessing.data")
        ),
        ("sklearn._loss._loss", "CyHalfBinomialLoss"),
        *(
            (m, n)
            for m in ("sklearn.linear_model._sgd_fast", "sklearn.linear_model.sgd_fast")
            for n in _SGD_LOSSES
        ),
        ("copyreg", "_reconstructor"),
        ("builtins", "object"),
    }
)


@dataclass(frozen=True)
class CelltypistParts:
    """What a CellTypist model holds, as arrays (no scikit-learn object is kept)."""

    genes: np.ndarray
    classes: np.ndarray
    coef: np.ndarray  # (classes, genes)
    intercept: np.ndarray  # (classes,)
    mean: np.ndarray  # (genes,): 0 where the scaler has with_mean=False
    scale: np.ndarray  # (genes,)
    classifier: str
    description: dict


def source_name(model) -> str:
    """How to name a CellTypist model in a message: its path, or what kind of object it is."""
    return repr(str(model)) if isinstance(model, (str, Path)) else f"(a {type(model).__name__})"


def _not_a_model(source: str, why: str) -> _core.InputError:
    return _core.InputError(
        f"{source} is not a CellTypist model ({why}). A CellTypist model is the pickle that "
        "celltypist.train(...).write(path) writes (a dict with 'Model', 'Scaler_' and "
        "'description'), e.g. Immune_All_Low.pkl from CellTypist's model list."
    )


def _load_pickle(path: Path, trust: bool = False):
    """Read a CellTypist ``.pkl``: by a restricted unpickler, or as any pickle with ``trust``."""
    if not path.exists():
        raise _core.InputError(f"No CellTypist model at {str(path)!r}: the file does not exist.")
    if path.is_dir():
        raise _core.InputError(f"{str(path)!r} is a directory; pass the CellTypist .pkl file.")
    data = path.read_bytes()
    try:
        if trust:
            return pickle.loads(data)
        return restricted_load(data, CELLTYPIST_GLOBALS, repr(str(path)), "a CellTypist model")
    except ModuleNotFoundError as err:
        raise _core.InputError(
            f"{str(path)!r} needs the Python package {err.name!r} to be read: install it "
            f"(pip install {err.name})."
        ) from err
    except _core.InputError:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError) as err:
        raise _not_a_model(repr(str(path)), f"{type(err).__name__}: {err}") from err


def read_celltypist(model, trust: bool = False) -> CelltypistParts:
    """Read a CellTypist model: a file path, the dict its pickle holds, or a ``celltypist`` Model.

    The model's classifier (``LogisticRegression`` or ``SGDClassifier``) and ``StandardScaler``
    are read for their arrays only; their methods are never called, so files written by
    scikit-learn releases that removed an option (``multi_class`` in 1.8) read as well.
    """
    source = "The object"
    if isinstance(model, (str, Path)):
        source = repr(str(model))
        model = _load_pickle(Path(model), trust)
    if hasattr(model, "classifier") and hasattr(model, "scaler"):  # celltypist.models.Model
        clf, scaler, description = model.classifier, model.scaler, model.description
    elif isinstance(model, dict):
        missing = [k for k in ("Model", "Scaler_") if k not in model]
        if missing:
            raise _not_a_model(source, f"a dict without {', '.join(map(repr, missing))}")
        clf, scaler, description = model["Model"], model["Scaler_"], model.get("description", {})
    else:
        raise _not_a_model(source, f"it holds a {type(model).__name__}")
    for name in ("coef_", "intercept_", "classes_", "features"):
        if getattr(clf, name, None) is None:
            raise _not_a_model(
                source,
                f"its classifier ({type(clf).__name__}) has no {name!r}"
                + ("; it was never fit" if name != "features" else ""),
            )
    if getattr(scaler, "scale_", None) is None and getattr(scaler, "with_std", True):
        raise _not_a_model(source, f"its scaler ({type(scaler).__name__}) has no scale_")
    genes = np.asarray(clf.features).astype(str)
    classes = np.asarray(clf.classes_)
    coef = np.asarray(clf.coef_, dtype=np.float64)
    intercept = np.atleast_1d(np.asarray(clf.intercept_, dtype=np.float64))
    if coef.ndim != 2 or coef.shape[1] != len(genes):
        raise _not_a_model(
            source, f"coef_ has shape {coef.shape} for {len(genes)} features: the file is damaged"
        )
    if coef.shape[0] == 1 and len(classes) == 2:
        # a binary classifier scores the second class; CellTypist scores [-s, s]
        coef, intercept = np.vstack([-coef, coef]), np.concatenate([-intercept, intercept])
    if coef.shape[0] != len(classes) or len(intercept) != len(classes):
        raise _not_a_model(
            source, f"{coef.shape[0]} rows of coefficients for {len(classes)} classes"
        )
    n = len(genes)
    with_mean = bool(getattr(scaler, "with_mean", True))
    mean = np.asarray(scaler.mean_, dtype=np.float64) if with_mean else np.zeros(n)
    scale = getattr(scaler, "scale_", None)
    scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
    if mean.shape != (n,) or scale.shape != (n,):
        raise _not_a_model(source, "its scaler does not have one value per feature")
    if pd.Index(genes).has_duplicates:
        raise _not_a_model(source, "its features hold duplicated gene names")
    return CelltypistParts(
        genes=genes,
        classes=classes.astype(str),
        coef=coef,
        intercept=intercept,
        mean=mean,
        scale=scale,
        classifier=type(clf).__name__,
        description={str(k): str(v) for k, v in dict(description or {}).items()},
    )


def placeholder_adata(genes: np.ndarray, classes: np.ndarray, key: str) -> ad.AnnData:
    """One log-normalised cell per class on the model's genes: registers a model without data."""
    n, g = len(classes), len(genes)
    rows = np.arange(n)
    X = sp.csr_matrix((np.full(n, np.log1p(1.0), np.float32), (rows, rows % g)), shape=(n, g))
    obs = pd.DataFrame({key: pd.Categorical(classes)}, index=[f"class_{i}" for i in rows])
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=pd.Index(genes)))
