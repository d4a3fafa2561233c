"""Class-balanced multinomial logistic regression with the scvi-tools model API."""

from __future__ import annotations

import logging
import time
import warnings
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import _core
from cellformer._core.lbfgs import balanced_weights, choose_C, fit_balanced_logistic
from cellformer._core.options import check_training_options
from cellformer._errors import ParameterError
from cellformer._utils import check_positive, check_probability, subsample
from cellformer.module import LinearModule

from .base import CellformerModel
from .base._files import check_finite
from .base._setup import internal_setup

logger = logging.getLogger("cellformer")

__all__ = ["LinearClassifier"]


class LinearClassifier(CellformerModel):
    """Class-balanced multinomial logistic regression on standardised log-normalised expression.

    The baseline every cellformer transformer is measured against. The objective is
    scikit-learn's ``LogisticRegression(C=C, class_weight="balanced")`` divided by
    ``C * n_train``, minimised full-batch by L-BFGS when the training cells fit in memory and by
    minibatch AdamW through Lightning otherwise (backed AnnData, DDP), so it scales to millions
    of cells; the standardisation statistics are streamed over the training cells only.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    C
        Inverse L2 regularisation strength, as in scikit-learn; ``"auto"`` (default) chooses it
        on the training cells by 5-fold cross-validated macro-F1 (as ``LogisticRegressionCV``).
    registry, input_kind
        Internal (used by :meth:`load`).
    one_vs_rest, clip
        Set by :meth:`from_celltypist`: probabilities are each class's ``sigmoid`` of its
        score (as CellTypist reports them), and standardised values are clipped at ``clip``.

    Examples
    --------
    >>> import cellformer as cf
    >>> adata = cf.datasets.pbmc68k_reduced()
    >>> cf.model.LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    >>> model = cf.model.LinearClassifier(adata)
    >>> model.train()
    >>> model.predict()  # writes adata.obs["cellformer_prediction"]
    """

    _module_cls = LinearModule
    _plan_defaults = {"lr": 1e-2, "warmup_fraction": 0.02}

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        C: float | Literal["auto"] = "auto",
        registry: dict | None = None,
        input_kind: Literal["counts", "lognorm"] | None = None,
        one_vs_rest: bool = False,
        clip: float | None = None,
    ):
        super().__init__(adata, registry=registry, input_kind=input_kind)
        if C != "auto" and (isinstance(C, str) or not C > 0):
            raise ParameterError(f"C must be positive or 'auto', got {C!r}.")
        self.C = C
        #: The C in use: ``C``, or the one cross-validation chose (1 until then).
        self.C_ = 1.0 if C == "auto" else float(C)
        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_labels=self.n_classes,
            input_kind=self.input_kind_,
            one_vs_rest=one_vs_rest,
            clip=clip,
        )
        input_kind = self.input_kind_
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def from_celltypist(cls, model, p_thres: float = 0.5, trust: bool = False) -> LinearClassifier:
        """Build a trained model from a CellTypist model: a ``.pkl`` path, its dict, or a ``Model``.

        Reads what ``celltypist.train(...).write(path)`` writes (and the published models, e.g.
        ``Immune_All_Low.pkl``): the genes, the scaler, the coefficients and the classes of its
        ``LogisticRegression`` or ``SGDClassifier``. It then predicts as ``celltypist.annotate``
        does in its default "best match" mode: log1p of counts per 10,000 (counts are
        normalised here; log-normalised input is read as it is), the model's genes that the
        query lacks drop out of the scores, standardised values are clipped at 10, each class's
        probability is the sigmoid of its score (not normalised across classes), the label the
        highest score. Everything of cellformer's API works: the same ``obs`` keys,
        ``soft=True``, ``majority_voting=True``, ``reject_unknown=True`` (cells whose top
        probability is below ``p_thres``: CellTypist's "Unassigned" of its "prob match" mode for
        cells without any class above it), gene names mapped across Ensembl IDs, symbols and
        species, ``save``/``load``.

        There is no novelty score (it needs the training cells, which a CellTypist model does
        not keep): ``obs["cellformer_novelty"]`` is not written and "Unknown" is by confidence
        only.

        A ``.pkl`` file is a Python pickle, which can run code when read. It is read by a
        restricted unpickler that admits only what a CellTypist model holds (its scikit-learn
        classifier and scaler, numpy arrays, builtin containers) and refuses any other import
        with an :class:`~cellformer.UnsafeFileError` before an object is built. Coefficients
        or scaler values that are NaN or infinite are an error.

        Parameters
        ----------
        model
            Path of the ``.pkl`` file, the dict it holds, or a ``celltypist.models.Model``.
        p_thres
            Probability below which ``predict(reject_unknown=True)`` labels a cell "Unknown".
        trust
            Read the file as any pickle (it may run code): only for a file you trust that the
            restricted reader refuses (e.g. one that needs a class it does not know).

        Examples
        --------
        >>> import cellformer as cf
        >>> model = cf.model.LinearClassifier.from_celltypist(
        ...     "Immune_All_Low.pkl"
        ... )  # doctest: +SKIP
        >>> model.predict(query, majority_voting=True)  # doctest: +SKIP
        """
        import torch

        from ._celltypist import CELLTYPIST_CLIP, placeholder_adata, read_celltypist, source_name

        if not 0 < p_thres < 1:  # NaN fails too
            raise ParameterError(f"p_thres must be in (0, 1), got {p_thres}.")
        parts = read_celltypist(model, trust=trust)
        key = "cell_type"
        cells = placeholder_adata(parts.genes, parts.classes, key)
        with warnings.catch_warnings(), internal_setup():  # placeholder cells, not data
            warnings.simplefilter("ignore", UserWarning)
            cls.setup_anndata(cells, labels_key=key)
            registry = cls(cells).registry_  # these genes and classes; no data is kept
        new = cls(registry=registry, input_kind="lognorm", one_vs_rest=True, clip=CELLTYPIST_CLIP)
        rows = pd.Index(parts.classes).get_indexer(new.classes)
        module = new.module
        with torch.no_grad():
            module.linear.weight.copy_(torch.as_tensor(parts.coef[rows]))
            module.linear.bias.copy_(torch.as_tensor(parts.intercept[rows]))
            module.mean.copy_(torch.as_tensor(parts.mean))
            module.std.copy_(torch.as_tensor(parts.scale))
            module.unknown_threshold.fill_(p_thres)
        check_finite(dict(module.state_dict()), f"The CellTypist model {source_name(model)}")
        new.is_trained_ = True
        new.source_ = {
            "format": "celltypist",
            "classifier": parts.classifier,
            "path": str(model) if isinstance(model, (str, Path)) else None,
            "description": parts.description,
        }
        logger.info(
            "CellTypist model (%s): %d genes, %d cell types. No novelty score: it needs the "
            "training cells, which the model does not keep.",
            parts.classifier,
            len(parts.genes),
            len(parts.classes),
        )
        return new

    def _fit_training_statistics(self, train_idx: np.ndarray) -> None:
        X = self._training_matrix()
        mean, std = _core.fit_scaler(
            X, self.input_kind_, train_idx, library=self._library(self.adata)
        )
        self.module.mean.copy_(torch.as_tensor(mean))
        self.module.std.copy_(torch.as_tensor(std))
        self.module.l2 = 1.0 / (self.C_ * len(train_idx))

    def _latent(self, x: torch.Tensor, extra: dict) -> torch.Tensor:
        return self.module.latent(x)

    def _latent_from_inference(self, x: torch.Tensor, extra: dict, inference: dict | None):
        # the latent is the scores without the bias: from the logits, not a second encoding
        if inference is None:
            return self._latent(x, extra)
        return inference["logits"] - self.module.linear.bias

    #: Values (cells × genes) of one inference chunk at least: a linear pass is cheap, and
    #: many small chunks of a backed query cost more in reads than in arithmetic.
    inference_chunk_values: int = 1 << 24

    def _inference_batch_size(self, batch_size: int) -> int:
        """At least :attr:`inference_chunk_values` values per chunk (64 MB in float32)."""
        return max(batch_size, self.inference_chunk_values // max(len(self.var_names), 1))

    def _describe(self) -> str:
        return f"C={self.C_:g}" + (" (auto)" if self.C == "auto" else "")

    #: Most training cells × genes fit full-batch in memory (float32: 4 bytes each).
    full_batch_max_entries: int = 200_000_000
    #: Most training cells the cross-validation of ``C="auto"`` uses (a seeded subsample; the
    #: final fit uses every training cell).
    cv_max_cells: int = 5_000

    def train(
        self,
        max_epochs: int | None = None,
        validation_size: float = 0.0,
        full_batch: bool | None = None,
        seed: int | None = 0,
        accelerator: str = "auto",
        enable_progress_bar: bool = True,
        unknown_rate: float = 0.05,
        temperature_scaling: bool = False,
        novelty: bool = True,
        unlabeled: ad.AnnData | bool | None = None,
        adapt_options: dict | None = None,
        **kwargs,
    ):
        """Train; the problem is convex, so by default on all labelled cells (``validation_size=0``).

        When the training matrix fits in memory (and no ``strategy`` such as DDP is asked for),
        the objective is minimised full-batch by L-BFGS (as scikit-learn does), in seconds;
        ``C="auto"`` is chosen first by 5-fold cross-validated macro-F1 on the training cells
        over :data:`~cellformer.train.C_GRID`. Otherwise (backed AnnData, DDP, or
        ``full_batch=False``) the same objective is minimised by minibatch AdamW through
        Lightning for ``max_epochs`` (see :meth:`CellformerModel.train` for the other options).

        Parameters
        ----------
        max_epochs
            Epochs of the minibatch path (ignored by the full-batch fit).
        validation_size
            Share of labelled cells held out (for the Unknown thresholds and temperature).
        full_batch
            ``None``: full-batch when it fits in memory; ``True``/``False`` forces either.
        seed, accelerator, enable_progress_bar, unknown_rate, temperature_scaling, novelty
            See :meth:`CellformerModel.train`; the full-batch fit runs on a GPU when
            ``accelerator`` allows and one is present.
        unlabeled, adapt_options
            Learn from unlabelled cells too (self-training); see :meth:`CellformerModel.train`.
        **kwargs
            Passed to :meth:`CellformerModel.train` (minibatch path only).
        """
        self._check_can_train(
            validation_size, temperature_scaling, kwargs.get("early_stopping", False)
        )
        own = self._train_parameters()
        check_training_options(
            self._training_plan_cls,
            kwargs.get("plan_kwargs"),
            {k: v for k, v in kwargs.items() if k not in own},
            own=own,
        )
        check_positive(max_epochs=max_epochs, batch_size=kwargs.get("batch_size"))
        check_probability(closed=True, unknown_rate=unknown_rate)
        self._learn_from_unlabeled(unlabeled, adapt_options, seed)
        if full_batch is None:
            full_batch = self._full_batch_fits(kwargs)
        common = {
            "validation_size": validation_size,
            "seed": seed,
            "unknown_rate": unknown_rate,
            "temperature_scaling": temperature_scaling,
            "novelty": novelty,
        }
        if not full_batch:
            if self.C == "auto":
                self._choose_C_on_subsample(seed)
            return super().train(
                max_epochs=max_epochs,
                accelerator=accelerator,
                enable_progress_bar=enable_progress_bar,
                **common,
                **kwargs,
            )
        return self._train_full_batch(accelerator=accelerator, **common)

    def _full_batch_fits(self, kwargs: dict) -> bool:
        if kwargs.get("strategy") not in (None, "auto") or kwargs.get("ckpt_path"):
            return False
        if getattr(self._expression_adata(self.adata), "isbacked", False):
            return False
        n_labelled = int((self._train_labels() < self.n_classes).sum())
        return n_labelled * len(self.var_names) <= self.full_batch_max_entries

    def _standardised(self, idx: np.ndarray, device) -> torch.Tensor:
        """Standardised log-normalised expression of training cells ``idx`` (dense, float32)."""
        blocks = [
            block
            for _, block in _core.iter_lognorm_chunks(
                self._training_matrix(), self.input_kind_, idx, library=self._library(self.adata)
            )
        ]
        x = torch.as_tensor(np.concatenate(blocks), device=device)
        return self.module.encode(x.to(self.module.mean.device)).to(device)

    def _choose_C_on_subsample(self, seed: int | None) -> None:
        labels = self._train_labels()
        idx = subsample(np.flatnonzero(labels < self.n_classes), self.cv_max_cells, seed)
        self._fit_training_statistics(idx)
        self.C_, self.cv_scores_ = choose_C(
            self._standardised(idx, "cpu"), labels[idx], self.n_classes, seed=seed
        )

    def _train_full_batch(
        self, validation_size, seed, unknown_rate, temperature_scaling, novelty, accelerator
    ):
        start = time.perf_counter()
        labels = self._train_labels()
        labelled = np.flatnonzero(labels < self.n_classes)
        train_idx, val_idx = self._split(labelled, labels[labelled], validation_size, seed)
        train_idx = np.sort(train_idx)
        self._fit_training_statistics(train_idx)
        use_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        device = torch.device("cuda" if use_gpu else "cpu")
        X = self._standardised(train_idx, device)
        y = labels[train_idx]
        self.module.class_weights.copy_(balanced_weights(y, self.n_classes))
        W, b, C, self.cv_scores_ = fit_balanced_logistic(
            X, y, self.n_classes, self.C, seed=seed, cv_max_cells=self.cv_max_cells
        )
        with torch.no_grad():
            self.module.linear.weight.copy_(W.to(self.module.linear.weight))
            self.module.linear.bias.copy_(b.to(self.module.linear.bias))
        self.module.l2 = 1.0 / (C * len(train_idx))
        self.C_ = C
        self.is_trained_ = True
        logger.info(
            "Logistic regression fit full-batch on %d cells × %d genes (C = %g%s) in %.1f s.",
            len(train_idx),
            X.shape[1],
            C,
            ", chosen by 5-fold CV" if self.C == "auto" else "",
            time.perf_counter() - start,
        )
        self._after_training(train_idx, val_idx, seed, novelty, temperature_scaling, unknown_rate)
