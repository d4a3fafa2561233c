"""The scvi-tools-style base class shared by every cellformer classifier.

Its parts live beside it: registering data (:mod:`._setup`), inference (:mod:`._inference`) and
calibration after training (:mod:`._calibration`); this module has construction, ``train`` and
save/load.
"""

from __future__ import annotations

import logging

import anndata as ad
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from scvi import REGISTRY_KEYS
from scvi.dataloaders import DataSplitter
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from sklearn.model_selection import train_test_split

from cellformer import _core
from cellformer._core.options import check_training_options
from cellformer._errors import ParameterError
from cellformer._settings import settings
from cellformer._utils import (
    check_positive,
    check_probability,
    epochs_for_steps,
    lightning_noise_filtered,
    seeded,
)
from cellformer.train import CellTypeTrainingPlan, RestoreBestWeights

from . import _calibration, _saved
from ._inference import InferenceMixin
from ._registry import register_model
from ._setup import SetupMixin

__all__ = ["CellformerModel"]

logger = logging.getLogger("cellformer")


class CellformerModel(SetupMixin, InferenceMixin, BaseModelClass):
    """Base class of cellformer's classifiers (not used directly).

    Subclasses set ``_module_cls``, build ``self.module`` in ``__init__`` and, when the module
    needs statistics of the training cells, implement ``_fit_training_statistics``.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Used by :meth:`load` to rebuild a model without data.
    input_kind
        Set internally (``"counts"`` or ``"lognorm"``, detected from the data); restored on load.
    """

    _training_plan_cls = CellTypeTrainingPlan
    _train_runner_cls = TrainRunner
    _data_splitter_cls = DataSplitter
    _plan_defaults: dict = {"lr": 1e-3}
    #: Least optimiser steps without improvement before early stopping (0: patience in epochs
    #: only).
    min_patience_steps: int = 0
    #: :meth:`load` also hands over models of the registered checkpoint classes (which this
    #: class's ``from_pretrained`` builds).
    _loads_checkpoints: bool = False
    # saving and loading, with a model card and hashes (code in ._saved)
    save = _saved.save
    load = _saved.load

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        register_model(cls)

    @property
    def _warm_start_keys(self) -> tuple[str, ...] | None:
        """State-dict prefixes that hold a fitted starting model worth keeping, or ``None``.

        A model whose training starts at a fitted solution (a transformer's linear path with a
        zero head) goes back to these entries of its starting weights when the last epoch is no
        better (see ``restore_best`` and :class:`RestoreBestWeights`); ``None``: a cold start.
        """
        return None

    def __init__(
        self, adata: ad.AnnData | None = None, registry: dict | None = None, input_kind=None
    ):
        super().__init__(adata, registry)
        if adata is not None:
            rna = self._expression_adata(adata)
            # setup_anndata validated the whole matrix; telling counts from log values needs a sample
            input_kind = _core.detect_expression_kind(
                _core.kind_matrix(rna, self._layer), self._layer
            )
            self.var_names_ = np.asarray(rna.var_names.astype(str))
        else:  # loading: the registry remembers the genes
            state = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
            self.var_names_ = np.asarray(state["column_names"]).astype(str)
        if input_kind is None:
            raise ParameterError("input_kind is needed to build a model without data.")
        self.input_kind_ = input_kind
        self._query_adata: ad.AnnData | None = None

    # -- hooks -----------------------------------------------------------------------------------
    #: Instance attributes a rebuild on unlabelled cells keeps (see :meth:`_learn_from_unlabeled`).
    _kept_on_rebuild: tuple[str, ...] = ("_keep_tokenizer_statistics",)

    @property
    def _holds_pretrained_weights(self) -> bool:
        """Whether the module starts from pretrained weights (kept when it is rebuilt)."""
        return self._latent_is_pretrained or getattr(self, "_keep_tokenizer_statistics", False)

    def _learn_from_unlabeled(self, unlabeled, adapt_options: dict | None, seed) -> None:
        """Rebuild on the reference + pseudo-labelled unlabelled cells (``train(unlabeled=)``)."""
        if unlabeled is None or unlabeled is False:
            if adapt_options:
                raise ParameterError("adapt_options need unlabeled= (an AnnData or True).")
            return
        from ._adapt import rebuild_on_unlabeled

        rebuild_on_unlabeled(self, unlabeled, seed, adapt_options)

    def _fit_training_statistics(self, train_idx: np.ndarray) -> None:
        """Fit what the module needs from the training cells only (scalers, vocabularies...)."""

    def _train_labels(self) -> np.ndarray:
        codes = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
        return np.asarray(codes).ravel().astype(int)

    # -- training ----------------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 128,
        validation_size: float = 0.1,
        early_stopping: bool = False,
        early_stopping_patience: int = 10,
        restore_best: bool = True,
        seed: int | None = 0,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        plan_kwargs: dict | None = None,
        enable_progress_bar: bool = True,
        unknown_rate: float = 0.05,
        temperature_scaling: bool = False,
        novelty: bool = True,
        unlabeled: ad.AnnData | bool | None = None,
        adapt_options: dict | None = None,
        **trainer_kwargs,
    ):
        """Train on the labelled cells of the registered AnnData.

        A stratified ``validation_size`` share of the labelled cells is held out for monitoring
        and early stopping; statistics the model needs (e.g. the scaler) are fit on the training
        cells only. Class weights are ``n / (n_classes * n_c)`` on the training cells.

        Parameters
        ----------
        max_epochs
            Passes over the training cells; a size-based default when ``None``.
        batch_size
            Cells per minibatch.
        validation_size
            Share of labelled cells held out (0 to train on all).
        early_stopping
            Stop when ``validation_loss`` has not improved for ``early_stopping_patience`` epochs.
        early_stopping_patience
            Epochs without improvement before stopping (at least :attr:`min_patience_steps`
            optimiser steps: on a hundred cells an epoch is two steps).
        restore_best
            With a validation split, end with the weights of the epoch with the lowest
            ``validation_loss`` (kept in memory, no checkpoint files). A model that starts at a
            fitted solution (a transformer's linear path) goes back to it when the last epoch's
            validation loss is worse than the start's, whatever ``restore_best``.
        seed
            Seed for the split, initialisation order and minibatch shuffling, used inside the
            call only (the caller's global random state is restored afterwards); ``None`` draws
            from the global random state.
        accelerator, devices
            Passed to Lightning.
        plan_kwargs
            Passed to :class:`~cellformer.train.CellTypeTrainingPlan` (``lr``, ``weight_decay`` ...).
        enable_progress_bar
            Show Lightning's progress bar.
        unknown_rate
            With a validation split, the "Unknown" thresholds are set so that at most this share
            of validation cells would be rejected (see ``predict(reject_unknown=True)``): half of
            it by low confidence, half by high novelty.
        novelty
            Fit the novelty score (:class:`~cellformer.nn.NoveltyScorer`: distance to the nearest
            training cells in a PCA of standardised expression, fit on training cells only). It
            flags cells of types absent from training that the classifier calls confidently.
        temperature_scaling
            After training, fit one temperature dividing the logits on the validation split
            (minimising its negative log-likelihood); predictions then use it. Labels do not
            change, probabilities become better calibrated.
        unlabeled
            Learn from unlabelled cells too: an AnnData of query cells, or ``True`` for the
            registered cells under ``setup_anndata``'s ``unlabeled_category``. Class-balanced
            logistic-regression self-training labels the most confident of them (two rounds, half
            of each predicted class; the cells' own labels are never read), and the model trains
            on the reference and those cells, log-normalised on its genes; ``model.adata`` is
            that combined data afterwards and ``adapted_to_`` records the cells it saw (see
            :func:`cellformer.tl.annotate`'s ``adapt``). Call it on an untrained model.
        adapt_options
            With ``unlabeled``: the query's ``layer`` and ``library_size_key``, and the
            self-training's ``rounds`` and ``share``.
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / :class:`lightning.pytorch.Trainer`
            (``strategy``, ``precision``, ``accumulate_grad_batches`` ...). ``ckpt_path``
            resumes a run from a Lightning checkpoint, written with
            ``enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath, save_last=True)]``;
            build the model and call ``train`` as for the first run.
        """
        self._check_can_train(validation_size, temperature_scaling, early_stopping)
        check_training_options(
            self._training_plan_cls, plan_kwargs, trainer_kwargs, own=self._train_parameters()
        )
        check_positive(max_epochs=max_epochs, batch_size=batch_size)
        check_probability(closed=True, unknown_rate=unknown_rate)
        self._learn_from_unlabeled(unlabeled, adapt_options, seed)
        with seeded(seed):  # reproducible, and the caller's random state is left alone
            train_idx, val_idx = self._prepare_training(validation_size, seed)
            if max_epochs is None:
                max_epochs = self._default_max_epochs(len(train_idx), batch_size)
            splitter = self._data_splitter(train_idx, val_idx, batch_size, trainer_kwargs)
            plan = self._training_plan_cls(
                self.module, **{**self._plan_defaults, **(plan_kwargs or {})}
            )
            callbacks = self._training_callbacks(
                train_idx, val_idx, batch_size, early_stopping, early_stopping_patience,
                restore_best, trainer_kwargs,
            )  # fmt: skip
            # Lightning keeps the modes submodules had: a module left in eval mode (by a reader
            # of a checkpoint, a user's eval()) would train with dropout off
            self.module.train()
            with lightning_noise_filtered():
                result = self._train_runner_cls(
                    self,
                    training_plan=plan,
                    data_splitter=splitter,
                    max_epochs=max_epochs,
                    accelerator=accelerator,
                    devices=devices,
                    early_stopping=False,
                    enable_progress_bar=enable_progress_bar and settings.shows_info,
                    **trainer_kwargs,
                )()
            self._report_stop(callbacks, max_epochs)
            self._after_training(
                train_idx, val_idx, seed, novelty, temperature_scaling, unknown_rate
            )
            return result

    def _make_head_bayesian(self, prior_sigma: float, init_sigma: float) -> None:
        """Turn ``module.head[-1]`` into a BayesianLinear (means = the trained weights).

        The saved init parameters follow, so that the model loads as Bayesian.
        """
        from cellformer.nn import BayesianLinear

        head = self.module.head
        if not isinstance(head[-1], BayesianLinear):
            head[-1] = BayesianLinear.from_linear(
                head[-1], prior_sigma=prior_sigma, init_sigma=init_sigma
            )
        self._record_init_params(head="bayesian", prior_sigma=prior_sigma, init_sigma=init_sigma)

    def _record_init_params(self, **changes) -> None:
        """Record changed constructor arguments in the saved init parameters (``load`` uses them)."""
        self.init_params_["non_kwargs"].update(changes)

    # -- the steps of train() ---------------------------------------------------------------------
    def _prepare_training(
        self, validation_size: float, seed: int | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Split the labelled cells, fit the training statistics and the class weights on them."""
        labels = self._train_labels()
        labelled = np.flatnonzero(labels < self.n_classes)
        train_idx, val_idx = self._split(labelled, labels[labelled], validation_size, seed)
        self._fit_training_statistics(np.sort(train_idx))
        counts = np.bincount(labels[train_idx], minlength=self.n_classes).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (self.n_classes * np.maximum(counts, 1)), 0.0)
        self.module.class_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
        self.module.n_train = len(train_idx)
        self.module.temperature.fill_(1.0)
        return train_idx, val_idx

    def _data_splitter(self, train_idx, val_idx, batch_size: int, trainer_kwargs: dict):
        """scvi-tools' splitter over these cells (DDP-aware); no validation loop without them."""
        unlabelled = np.flatnonzero(self._train_labels() >= self.n_classes)
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1 if len(val_idx) else None)
        if not len(val_idx):
            # no validation loop at all: a run resumed from a checkpoint would otherwise ask for
            # the (missing) validation loader and fail
            trainer_kwargs.setdefault("limit_val_batches", 0)
        return self._data_splitter_cls(
            self.adata_manager,
            # scvi-tools wants every cell in some split: unlabelled cells go to the unused test one
            external_indexing=[np.sort(train_idx), np.sort(val_idx), unlabelled],
            batch_size=batch_size,
            # under DDP every rank reads its own share of each split (scvi-tools' sampler)
            distributed_sampler=use_distributed_sampler(trainer_kwargs.get("strategy")),
        )

    def _training_callbacks(
        self,
        train_idx,
        val_idx,
        batch_size: int,
        early_stopping: bool,
        patience: int,
        restore_best: bool,
        trainer_kwargs: dict,
    ) -> list:
        """Early stopping and best-weight restoring, added to the user's callbacks."""
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if early_stopping:  # Lightning's, which logs; scvi-tools' prints to stdout
            floor = epochs_for_steps(self.min_patience_steps, len(train_idx), batch_size)
            callbacks.append(EarlyStopping("validation_loss", patience=max(patience, floor)))
        warm = self._warm_start_keys
        if len(val_idx) and (restore_best or warm is not None):
            callbacks.append(
                RestoreBestWeights(
                    "validation_loss",
                    initial=warm is not None,
                    initial_keys=warm,
                    last_only=not restore_best,  # then only the start competes with the end
                )
            )
        trainer_kwargs["callbacks"] = callbacks
        return callbacks

    def _after_training(
        self,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        seed: int | None,
        novelty: bool,
        temperature_scaling: bool,
        unknown_rate: float,
    ) -> None:
        """Fit what comes after the weights: novelty score, temperature, Unknown thresholds.

        Also records what the model card of :meth:`save` reports: the training cells per class
        and, with a validation split, accuracy and macro-F1 on it.
        """
        from ._hub import class_counts

        labels = self._train_labels()
        self.training_summary_ = {
            "n_train_cells": len(train_idx),
            "n_validation_cells": len(val_idx),
            "class_counts": class_counts(labels[train_idx], self.classes),
        }
        self.validation_metrics_ = None
        if novelty:
            _calibration.fit_novelty(self, np.sort(train_idx), seed)
        if len(val_idx):
            if temperature_scaling:
                _calibration.fit_temperature(self, np.sort(val_idx))
            val_idx = np.sort(val_idx)
            summary = _calibration.validation_summary(self, val_idx)
            _calibration.fit_unknown_threshold(self, val_idx, unknown_rate, summary)
            self._record_validation(val_idx, summary)

    def _record_validation(self, val_idx: np.ndarray, summary) -> None:
        """Accuracy and macro-F1 on the validation cells (for the model card)."""
        from sklearn.metrics import f1_score

        truth = self._train_labels()[val_idx]
        predicted = summary.top
        self.validation_metrics_ = {
            "validation cells": len(val_idx),
            "accuracy": float(np.mean(predicted == truth)),
            "macro-F1": float(f1_score(truth, predicted, average="macro")),
        }

    def _report_stop(self, callbacks: list, max_epochs: int) -> None:
        """Say when early stopping ended training, and which epoch's weights were kept."""
        trainer = getattr(self, "trainer", None)
        epochs = trainer.current_epoch if trainer is not None else max_epochs
        stopper = next((c for c in callbacks if isinstance(c, EarlyStopping)), None)
        restorer = next((c for c in callbacks if isinstance(c, RestoreBestWeights)), None)
        text = f"Trained {epochs} of at most {max_epochs} epochs"
        if stopper is not None and stopper.stopped_epoch > 0:
            text = (
                f"Early stopping after {epochs} of at most {max_epochs} epochs "
                f"(validation loss did not improve for {stopper.patience} epochs)"
            )
        if restorer is not None and restorer.best_epoch is not None:
            kept = (
                "the starting weights (no epoch beat them)"
                if restorer.best_epoch < 0
                else f"epoch {restorer.best_epoch + 1}"
            )
            text += f"; kept {kept}, validation loss {restorer.best_score:.4f}"
        logger.info("%s.", text)

    @staticmethod
    def _default_max_epochs(n_train: int, batch_size: int) -> int:
        """About 2,000 optimisation steps for small data, at least 5 epochs for large data."""
        return int(np.clip(epochs_for_steps(2000, n_train, batch_size), 5, 200))

    @staticmethod
    def _split(idx: np.ndarray, y: np.ndarray, validation_size: float, seed: int | None):
        if validation_size <= 0:
            return idx, np.array([], dtype=int)
        if not 0 < validation_size < 1:
            raise ParameterError(f"validation_size must be in [0, 1), got {validation_size}.")
        _, class_counts = np.unique(y, return_counts=True)
        n_val = int(np.ceil(validation_size * len(idx)))
        # stratify when every class can be in both parts (tiny training sets cannot)
        stratify = (
            y
            if class_counts.min() >= 2 and len(class_counts) <= min(n_val, len(idx) - n_val)
            else None
        )
        train, val = train_test_split(
            idx, test_size=validation_size, random_state=seed, stratify=stratify
        )
        return train, val

    def tokenize(self, adata: ad.AnnData | None = None, layer: str | None = None) -> dict:
        """Return the tokens the model sees for each cell: the same keys for every model.

        Returns
        -------
        A dict of arrays with a row per cell of ``adata`` (genes aligned to the model's by
        name), ``<pad>``-padded to the longest cell: ``ids`` (int token ids), ``tokens`` (the
        token strings: gene names and special tokens such as ``"<cls>"``), ``values`` (each
        token's expression value as the model reads it; NaN where it reads none),
        ``padding_mask`` (``True`` at padding), and ``obs_names`` (one per row). A model may
        add keys (``bins`` for binned expression).
        """
        raise _core.InputError(
            f"{type(self).__name__} reads expression values directly; it has no tokens. "
            "tokenize() is for CellTransformer, GeneformerClassifier and ScGPTClassifier."
        )

    # -- display ---------------------------------------------------------------------------------
    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        state = "trained" if self.is_trained_ else "not trained"
        args = self._setup_args
        data = f"labels_key={args['labels_key']!r}, layer={self._layer!r}"
        extra = self._describe()
        return (
            f"{type(self).__name__}({len(self.var_names)} genes → {self.n_classes} cell types, "
            f"{self.input_kind_} input{', ' + extra if extra else ''}; {state})\n"
            f"  setup: {data}\n  classes: {', '.join(self.classes[:8])}"
            f"{', ...' if self.n_classes > 8 else ''}"
        )

    @property
    def summary_string(self) -> str:
        """Summary of the model (as in scvi-tools)."""
        return repr(self)

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(repr(self))
