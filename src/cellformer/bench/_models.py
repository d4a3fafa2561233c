"""The models a benchmark runs: registry, fitters, the scikit-learn reference, probabilities."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import anndata as ad
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from cellformer import _core, pp
from cellformer._errors import ParameterError

__all__ = [
    "MODELS",
    "SklearnLogisticRegression",
    "n_parameters",
    "parse_models",
    "predict_probabilities",
]

logger = logging.getLogger("cellformer")


class SklearnLogisticRegression:
    """scikit-learn's balanced logistic regression on standardised log-normalised input.

    ``LogisticRegression(class_weight="balanced")``: the reference that
    :class:`~cellformer.model.LinearClassifier` must match. ``C="auto"`` (default) tunes C the
    same way LinearClassifier does: ``LogisticRegressionCV`` over the same grid, stratified
    5-fold, macro-F1.

    The scaler is fit on the cells passed to :meth:`fit` only. ``blas_threads`` caps the BLAS
    threads of the fit (``None``: the library's default). The default, 1, is scikit-learn's
    fastest on 2 cores by far: with OpenBLAS's two threads its L-BFGS spends most of its time in
    thread hand-offs on these small matrices (``LogisticRegressionCV`` on PBMC3k fold 0, 2,110
    cells × 2,000 genes: 25 s on two threads, 7.1 s on one; pbmc68k_reduced: 10.5 s against
    1.4 s), which made it look 3.5–8× slower than it is.
    """

    def __init__(
        self,
        C: float | str = "auto",
        max_iter: int = 2000,
        seed: int = 0,
        blas_threads: int | None = 1,
    ):
        self.C = C
        self.max_iter = max_iter
        self.seed = seed
        self.blas_threads = blas_threads

    @staticmethod
    def _lognorm(adata: ad.AnnData, layer: str | None) -> np.ndarray:
        X = _core.get_matrix(adata, layer)
        kind = pp.check_expression(adata, layer)
        return np.concatenate([b for _, b in _core.iter_lognorm_chunks(X, kind)], axis=0)

    def fit(self, adata: ad.AnnData, labels_key: str, layer: str | None = None):
        """Fit scaler and classifier on ``adata``."""
        X = self._lognorm(adata, layer)
        self.scaler_ = StandardScaler().fit(X)
        y = adata.obs[labels_key].astype(str).to_numpy()
        if self.C == "auto":
            from sklearn.linear_model import LogisticRegressionCV
            from sklearn.metrics import f1_score, make_scorer
            from sklearn.model_selection import StratifiedKFold

            from cellformer.train import C_GRID

            n_folds = int(min(5, pd.Series(y).value_counts().min()))
            # scikit-learn >= 1.9 warns unless the L2 penalty and the new fitted attributes
            # are asked for explicitly (older versions lack both arguments)
            params = inspect.signature(LogisticRegressionCV).parameters
            quiet = (
                {"l1_ratios": (0.0,), "use_legacy_attributes": False}
                if "use_legacy_attributes" in params
                else {}
            )
            self.clf_ = LogisticRegressionCV(
                Cs=list(C_GRID),
                cv=StratifiedKFold(max(n_folds, 2), shuffle=True, random_state=self.seed),
                scoring=make_scorer(f1_score, average="macro"),
                class_weight="balanced",
                max_iter=self.max_iter,
                random_state=self.seed,
                **quiet,
            )
        else:
            self.clf_ = LogisticRegression(
                C=self.C, class_weight="balanced", max_iter=self.max_iter, random_state=self.seed
            )
        from threadpoolctl import threadpool_limits

        with threadpool_limits(self.blas_threads, user_api="blas"):
            self.clf_.fit(self.scaler_.transform(X), y)
        self.var_names_ = adata.var_names
        return self

    def predict(self, adata: ad.AnnData, layer: str | None = None) -> np.ndarray:
        """Predicted labels for ``adata`` (same genes as in :meth:`fit`)."""
        X = self._lognorm(adata[:, self.var_names_], layer)
        return self.clf_.predict(self.scaler_.transform(X))

    def predict_proba(self, adata: ad.AnnData, layer: str | None = None) -> pd.DataFrame:
        """Class probabilities (cells × classes)."""
        X = self._lognorm(adata[:, self.var_names_], layer)
        probs = self.clf_.predict_proba(self.scaler_.transform(X))
        return pd.DataFrame(probs, index=adata.obs_names, columns=self.clf_.classes_)


def _fit_linear(train: ad.AnnData, labels_key, layer, seed, config):
    from cellformer.model import LinearClassifier

    LinearClassifier.setup_anndata(train, labels_key=labels_key, layer=layer)
    model = LinearClassifier(train, C=config.get("C", "auto"))
    model.train(seed=seed, enable_progress_bar=False, max_epochs=config.get("max_epochs"))
    return model


def _fit_transformer(train: ad.AnnData, labels_key, layer, seed, config):
    from cellformer.model import CellTransformer

    config = dict(config)
    train_kwargs = config.pop("train", {})
    CellTransformer.setup_anndata(train, labels_key=labels_key, layer=layer)
    model = CellTransformer(train, **config)
    model.train(seed=seed, enable_progress_bar=False, **train_kwargs)
    return model


#: The last encoder pretrained by :func:`_fit_pretrained`: ``(key, encoder)``. A run visits every
#: training size of a split in turn, so each split is pretrained once.
_PRETRAINED: list = []


def _fingerprint(adata: ad.AnnData, layer: str | None) -> str:
    """Identify the cells an encoder was pretrained on: names, genes, layer and some values.

    Two runs in one process with the same fold name and cell count must not share an encoder.
    """
    import hashlib

    digest = hashlib.sha1()
    for part in (adata.obs_names, adata.var_names):
        digest.update("\x1f".join(map(str, part)).encode())
    digest.update(repr(layer).encode())
    X = adata.X if layer is None else adata.layers[layer]
    block = X[: min(adata.n_obs, 64)]
    values = block.toarray() if hasattr(block, "toarray") else np.asarray(block)
    digest.update(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return f"{adata.n_obs}:{digest.hexdigest()}"


def _fit_pretrained(
    train: ad.AnnData,
    labels_key,
    layer,
    seed,
    config,
    unlabelled: ad.AnnData | None = None,
    split: str | None = None,
):
    """Masked-expression pretraining, then fine-tuning on the labelled training cells.

    ``config["encoder"]``: a saved :class:`~cellformer.model.PretrainedEncoder` (pretrained
    elsewhere, e.g. on another dataset). Otherwise the encoder is pretrained with
    ``config["pretrain"]`` (arguments of :func:`~cellformer.model.pretrain`) on ``unlabelled``:
    every cell of the training split, labels unread — the semi-supervised setting of a learning
    curve, where only a subset is labelled. Test cells are never seen. Other keys go to
    :meth:`~cellformer.model.CellTransformer.from_pretrained` (``"train"``: to ``train``).
    """
    from cellformer.model import CellTransformer, pretrain

    config = dict(config)
    train_kwargs = config.pop("train", {})
    encoder = config.pop("encoder", None)
    options = dict(config.pop("pretrain", {}))
    if encoder is None:
        cells = unlabelled if unlabelled is not None else train
        key = (split, _fingerprint(cells, layer), repr(sorted(options.items())), seed)
        if not _PRETRAINED or _PRETRAINED[0][0] != key:
            options.setdefault("enable_progress_bar", False)
            _PRETRAINED[:] = [(key, pretrain(cells, layer=layer, seed=seed, **options))]
        encoder = _PRETRAINED[0][1]
    model = CellTransformer.from_pretrained(encoder, train, labels_key, layer=layer, **config)
    model.train(seed=seed, enable_progress_bar=False, **train_kwargs)
    return model


_fit_pretrained.uses_unlabelled = True


def _fit_sklearn(train: ad.AnnData, labels_key, layer, seed, config):
    return SklearnLogisticRegression(C=config.get("C", "auto"), seed=seed).fit(
        train, labels_key, layer
    )


#: Model name → function ``(train, labels_key, layer, seed, config) -> fitted model``. A fitted
#: model has ``predict(adata, layer=...)`` and ``n_params``. A function with the attribute
#: ``uses_unlabelled`` also gets ``unlabelled`` (every cell of the training split, of which
#: ``train`` may be a labelled subset) and ``split`` (its name).
MODELS: dict[str, Callable] = {
    "linear": _fit_linear,
    "transformer": _fit_transformer,
    "pretrained": _fit_pretrained,
    "sklearn_logreg": _fit_sklearn,
}


def n_parameters(model) -> int:
    """Count the trained parameters of a fitted model."""
    if isinstance(model, SklearnLogisticRegression):
        return int(model.clf_.coef_.size + model.clf_.intercept_.size)
    return int(sum(p.numel() for p in model.module.parameters()))


def parse_models(models: dict[str, dict] | list[str] | str | None) -> dict[str, dict]:
    """Model specs → ``{name: config}``.

    ``"transformer:scgpt"`` is the transformer with the ``scgpt`` tokenizer preset; a dict maps
    names to configs whose ``"model"`` key names the entry of :data:`MODELS` (default: the name
    before ``:``) and whose other keys go to the model (``"train"``: to ``train``).
    """
    if models is None:
        models = ["linear", "transformer", "sklearn_logreg"]
    if isinstance(models, str):
        models = [m.strip() for m in models.split(",") if m.strip()]
    if not isinstance(models, dict):
        models = {name: {} for name in models}
    out = {}
    for name, config in models.items():
        config = dict(config)
        base, _, preset = name.partition(":")
        config.setdefault("model", base)
        if preset:
            if config["model"] != "transformer":
                raise ParameterError(
                    f"Only the transformer takes a tokenizer preset, got {name!r}."
                )
            config.setdefault("tokenizer", preset)
        if config["model"] not in MODELS:
            raise ParameterError(
                f"Unknown model {config['model']!r}. Known models: {sorted(MODELS)} "
                "(the transformer as transformer:PRESET, e.g. transformer:geneformer)."
            )
        if "tokenizer" in config:
            from cellformer.tokenizers import get_config

            get_config(config["tokenizer"])  # fail now on an unknown preset, not in fold 1
        out[name] = config
    return out


def predict_probabilities(
    model, test: ad.AnnData, layer: str | None, key_prefix: str | None = None, **kwargs
) -> pd.DataFrame:
    """Class probabilities (cells × classes) of any fitted benchmark model.

    cellformer models write their obs keys under ``key_prefix`` (none by default); ``kwargs`` go
    to their ``predict`` (e.g. ``mc_dropout=True``). With Monte-Carlo samples, the mean.
    """
    if isinstance(model, SklearnLogisticRegression):
        return model.predict_proba(test, layer)
    probs = model.predict(test, soft=True, layer=layer, key_prefix=key_prefix, **kwargs)
    return probs
