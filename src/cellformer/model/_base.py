"""The scvi-tools-style base class shared by every cellformer classifier."""

from __future__ import annotations

import logging
from typing import NamedTuple

import anndata as ad
import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.callbacks import EarlyStopping
from mudata import MuData
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import (
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
    MuDataCategoricalObsField,
    MuDataLabelsWithUnlabeledObsField,
    MuDataLayerField,
    NumericalObsField,
)
from scvi.dataloaders import DataSplitter
from scvi.model._utils import use_distributed_sampler
from scvi.model.base import BaseModelClass
from scvi.train import TrainRunner
from sklearn.model_selection import train_test_split

from cellformer import pp
from cellformer._utils import epochs_for_steps, lightning_noise_filtered
from cellformer.nn import mc_sampling, predictive_summary
from cellformer.train import ClassifierTrainingPlan, RestoreBestWeights

__all__ = ["CellformerModel"]

logger = logging.getLogger("cellformer")

DEFAULT_PREFIX = "cellformer"
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
)


class Resolved(NamedTuple):
    """A query validated for inference (see ``CellformerModel._resolve``)."""

    adata: ad.AnnData
    X: object
    kind: str
    alignment: pp.GeneAlignment
    library: np.ndarray | None


#: The label of rejected cells.
UNKNOWN = "Unknown"


class CellformerModel(BaseModelClass):
    """Base class of cellformer's classifiers (not used directly).

    Subclasses set ``_module_cls`` and implement :meth:`_build_module` and, when the module needs
    statistics of the training cells, :meth:`_fit_training_statistics`.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        Used by :meth:`load` to rebuild a model without data.
    input_kind
        Set internally (``"counts"`` or ``"lognorm"``, detected from the data); restored on load.
    """

    _training_plan_cls = ClassifierTrainingPlan
    _train_runner_cls = TrainRunner
    _data_splitter_cls = DataSplitter
    _plan_defaults: dict = {"lr": 1e-3}
    #: Least optimiser steps without improvement before early stopping (0: patience in epochs
    #: only).
    min_patience_steps: int = 0
    #: When early stopping keeps the starting weights of a warm-started model, only these
    #: state-dict entries are restored (``None``: all); see :class:`RestoreBestWeights`.
    _initial_restore_keys: tuple[str, ...] | None = None

    def __init__(
        self, adata: ad.AnnData | None = None, registry: dict | None = None, input_kind=None
    ):
        super().__init__(adata, registry)
        if adata is not None:
            rna = self._expression_adata(adata)
            # setup_anndata validated the whole matrix; telling counts from log values needs a sample
            input_kind = pp.detect_expression_kind(pp.get_matrix(rna, self._layer), self._layer)
            self.var_names_ = np.asarray(rna.var_names.astype(str))
        else:  # loading: the registry remembers the genes
            state = self.registry_["field_registries"][REGISTRY_KEYS.X_KEY]["state_registry"]
            self.var_names_ = np.asarray(state["column_names"]).astype(str)
        if input_kind is None:
            raise ValueError("input_kind is needed to build a model without data.")
        self.input_kind_ = input_kind
        self._query_adata: ad.AnnData | None = None

    # -- setup -----------------------------------------------------------------------------------
    @classmethod
    def setup_anndata(
        cls,
        adata: ad.AnnData,
        labels_key: str | None = None,
        layer: str | None = None,
        batch_key: str | None = None,
        unlabeled_category: str = "Unknown",
        library_size_key: str | None = None,
        **kwargs,
    ):
        """Validate ``adata`` and register the fields the model reads.

        Parameters
        ----------
        adata
            Cells × genes, raw counts or log-normalised values (detected; anything else is
            rejected with an explanation).
        labels_key
            Column of ``adata.obs`` with curated cell types. Cells whose label equals
            ``unlabeled_category`` are not used for training.
        layer
            Layer with the expression values; ``None`` for ``adata.X``.
        batch_key
            Optional column with batches (registered for models that use it).
        unlabeled_category
            Label value that marks unlabelled cells.
        library_size_key
            Column of ``adata.obs`` with each cell's library size over its *whole* transcriptome
            (scvi-tools calls a similar field ``size_factor_key``), used when ``adata`` holds
            counts of a gene subset: e.g. ``"nCount_RNA"`` for a Seurat object reduced to its
            variable genes, or the column :func:`cellformer.pp.subset_genes` writes. Without
            it, counts are normalised by the sum over the genes present, which differs from a
            query normalised over its whole transcriptome. Ignored for log-normalised input.
            Queries given to ``predict`` use the same column when they have it.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if labels_key is None:
            raise pp.InputError(
                "labels_key is required: name the column of adata.obs that holds the cell types, "
                "e.g. setup_anndata(adata, labels_key='cell_type')."
            )
        pp.validate_anndata(adata, layer, labels_key, unlabeled_category=unlabeled_category)
        if adata.obs[labels_key].isna().any():
            n = int(adata.obs[labels_key].isna().sum())
            raise pp.InputError(
                f"adata.obs[{labels_key!r}] has {n} missing values. Mark unlabelled cells explicitly: "
                f"adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].astype(str)"
                f".where(adata.obs[{labels_key!r}].notna(), {unlabeled_category!r})."
            )
        if batch_key is not None and batch_key not in adata.obs:
            raise pp.InputError(
                f"batch_key={batch_key!r} is not a column of adata.obs. Available: {list(adata.obs.columns)}."
            )
        if library_size_key is not None:
            pp.check_library_sizes(adata, library_size_key)
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=False),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        ]
        if library_size_key is not None:
            fields.append(
                NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, library_size_key, required=False)
            )
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    @classmethod
    def setup_mudata(
        cls,
        mdata: MuData,
        labels_key: str | None = None,
        rna_layer: str | None = None,
        batch_key: str | None = None,
        modalities: dict[str, str] | None = None,
        unlabeled_category: str = "Unknown",
        **kwargs,
    ):
        """Register a MuData: expression from its RNA modality, labels from ``mdata.obs``.

        Parameters
        ----------
        mdata
            MuData whose modalities share the same cells (``muon.pp.intersect_obs`` otherwise).
        labels_key
            Column with curated cell types, in ``mdata.obs`` (or in the modality named by
            ``modalities["labels_key"]``).
        rna_layer
            Layer of the RNA modality with counts or log-normalised values; ``None`` for ``X``.
        batch_key
            Optional batch column (in ``mdata.obs`` or ``modalities["batch_key"]``).
        modalities
            ``{"rna_layer": "rna"}`` names the RNA modality (the default); ``"labels_key"`` and
            ``"batch_key"`` entries name the modality whose ``obs`` holds those columns.
        unlabeled_category
            Label value that marks unlabelled cells.
        **kwargs
            Passed to :meth:`scvi.data.AnnDataManager.register_fields`.

        Notes
        -----
        Predictions and embeddings are written to the RNA modality (``mdata["rna"].obs`` and
        ``.obsm``); ``mdata.update()`` shows them in ``mdata.obs`` as ``rna:...``.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        if not isinstance(mdata, MuData):
            raise pp.InputError(
                f"setup_mudata needs a MuData, got {type(mdata).__name__}; use setup_anndata."
            )
        modalities = {"rna_layer": "rna", **(modalities or {})}
        unknown = set(modalities) - {"rna_layer", "labels_key", "batch_key"}
        if unknown:
            raise pp.InputError(
                f"Unknown modalities keys {sorted(unknown)}; use rna_layer, labels_key, batch_key."
            )
        for key, mod in modalities.items():
            if mod is not None and mod not in mdata.mod:
                raise pp.InputError(
                    f"modalities[{key!r}]={mod!r} is not a modality of this MuData; it has "
                    f"{list(mdata.mod)}."
                )
        rna = mdata[modalities["rna_layer"]]
        if rna.n_obs != mdata.n_obs:
            raise pp.InputError(
                f"The RNA modality has {rna.n_obs} cells, the MuData {mdata.n_obs}: keep the cells "
                "shared by all modalities first (muon.pp.intersect_obs(mdata))."
            )
        if labels_key is None:
            raise pp.InputError("labels_key is required: the obs column with the cell types.")
        labels_obs = mdata[modalities["labels_key"]].obs if "labels_key" in modalities else None
        obs = labels_obs if labels_obs is not None else mdata.obs
        pp.check_var_names(rna)
        pp.check_expression(rna, rna_layer)
        pp.check_labels(ad.AnnData(obs=obs), labels_key, unlabeled_category=unlabeled_category)
        fields = [
            MuDataLayerField(
                REGISTRY_KEYS.X_KEY,
                rna_layer,
                mod_key=modalities["rna_layer"],
                is_count_data=False,
                mod_required=True,
            ),
            MuDataLabelsWithUnlabeledObsField(
                REGISTRY_KEYS.LABELS_KEY,
                labels_key,
                unlabeled_category,
                mod_key=modalities.get("labels_key"),
            ),
            MuDataCategoricalObsField(
                REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.get("batch_key")
            ),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(mdata, **kwargs)
        cls.register_manager(manager)

    # -- registry helpers (work with and without attached data) ---------------------------------
    @property
    def _setup_args(self) -> dict:
        return self.registry_["setup_args"]

    @property
    def _layer(self) -> str | None:
        """Layer with the expression values (``rna_layer`` for MuData)."""
        args = self._setup_args
        return args["rna_layer"] if "rna_layer" in args else args.get("layer")

    def _expression_adata(self, adata):
        """Return the AnnData with the expression: ``adata``, or a MuData's RNA modality."""
        if isinstance(adata, MuData):
            modalities = self._setup_args.get("modalities") or {}
            mod = modalities.get("rna_layer", "rna")
            if mod not in adata.mod:
                raise pp.InputError(
                    f"This MuData has no modality {mod!r} (it has {list(adata.mod)})."
                )
            return adata[mod]
        return adata

    def _training_matrix(self):
        """Expression matrix of the registered training data."""
        return pp.get_matrix(self._expression_adata(self.adata), self._layer)

    @property
    def library_size_key(self) -> str | None:
        """The ``obs`` column with whole-transcriptome library sizes (``setup_anndata``)."""
        return self._setup_args.get("library_size_key")

    def _library(self, adata, key: str | None = None) -> np.ndarray | None:
        """Library sizes of ``adata``'s cells from ``key`` (default: the setup's column).

        ``None`` (row sums) when no column is named, or when the setup's column is absent from
        a query (then each query cell's sum over its own genes is its library). A named ``key``
        must exist.
        """
        adata = self._expression_adata(adata)
        if key is None:
            key = self.library_size_key
            if key is not None and key not in adata.obs:
                logger.debug("No obs[%r]: library sizes are the sums over the data's genes.", key)
                return None
        return None if key is None else pp.check_library_sizes(adata, key)

    @property
    def labels_key(self) -> str:
        """The ``obs`` column the model was trained on."""
        return self._setup_args["labels_key"]

    @property
    def classes(self) -> list[str]:
        """Cell types the model predicts, in the order of its outputs."""
        state = self.registry_["field_registries"][REGISTRY_KEYS.LABELS_KEY]["state_registry"]
        mapping = [str(c) for c in state["categorical_mapping"]]
        return mapping[:-1]  # the unlabelled category is always last

    @property
    def var_names(self) -> pd.Index:
        """Genes the model uses, in its input order."""
        return pd.Index(self.var_names_)

    @property
    def n_classes(self) -> int:
        """Number of cell types."""
        return len(self.classes)

    def _check_can_train(
        self, validation_size: float, temperature_scaling: bool, early_stopping: bool
    ) -> None:
        """Refuse to train without data, on stale label codes, or without a needed validation split."""
        if self.adata is None or self.adata_manager is None:
            raise RuntimeError(
                "This model has no registered training data (it was loaded for prediction). "
                "Create a new model from an AnnData set up with setup_anndata to train."
            )
        self._check_registry_current()
        if temperature_scaling and validation_size <= 0:
            raise ValueError("temperature_scaling needs a validation split: validation_size > 0.")
        if early_stopping and validation_size <= 0:
            raise ValueError("early_stopping needs a validation split: set validation_size > 0.")

    def _check_registry_current(self) -> None:
        """Refuse to train on an AnnData that ``setup_anndata`` registered again since.

        ``setup_anndata`` writes the label codes into ``adata.obs``; run again (e.g. with another
        ``labels_key``) it would make this model train on codes of other classes.
        """
        from scvi.data._constants import _MANAGER_UUID_KEY

        current = self.adata.uns.get(_MANAGER_UUID_KEY)
        if current is not None and current != self.adata_manager.id:
            raise pp.InputError(
                "setup_anndata was run on this AnnData again after the model was built "
                f"(the model was built with labels_key={self.labels_key!r}); its label codes "
                "no longer match the model's classes. Build a new model after setup_anndata, "
                f"or run {type(self).__name__}.setup_anndata(adata, labels_key="
                f"{self.labels_key!r}, ...) again before training this one."
            )

    # -- hooks -----------------------------------------------------------------------------------
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
            ``validation_loss`` (kept in memory, no checkpoint files).
        seed
            Seed for the split, initialisation order and minibatch shuffling; ``None`` leaves the
            global random state alone.
        accelerator, devices
            Passed to Lightning.
        plan_kwargs
            Passed to :class:`~cellformer.train.ClassifierTrainingPlan` (``lr``, ``weight_decay`` ...).
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
        **trainer_kwargs
            Passed to :class:`scvi.train.Trainer` / :class:`lightning.pytorch.Trainer`
            (``strategy``, ``precision``, ``accumulate_grad_batches`` ...). ``ckpt_path``
            resumes a run from a Lightning checkpoint, written with
            ``enable_checkpointing=True, callbacks=[ModelCheckpoint(dirpath, save_last=True)]``;
            build the model and call ``train`` as for the first run.
        """
        self._check_can_train(validation_size, temperature_scaling, early_stopping)
        if seed is not None:
            pl.seed_everything(seed, verbose=False)
        labels = self._train_labels()
        labelled = np.flatnonzero(labels < self.n_classes)
        train_idx, val_idx = self._split(labelled, labels[labelled], validation_size, seed)
        self._fit_training_statistics(np.sort(train_idx))
        counts = np.bincount(labels[train_idx], minlength=self.n_classes).astype(np.float64)
        weights = np.where(counts > 0, counts.sum() / (self.n_classes * np.maximum(counts, 1)), 0.0)
        self.module.class_weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
        self.module.n_train = len(train_idx)
        if max_epochs is None:
            max_epochs = self._default_max_epochs(len(train_idx), batch_size)
        splitter = self._data_splitter_cls(
            self.adata_manager,
            # scvi-tools wants every cell in some split: unlabelled cells go to the unused test split
            external_indexing=[
                np.sort(train_idx),
                np.sort(val_idx),
                np.flatnonzero(labels >= self.n_classes),
            ],
            batch_size=batch_size,
            # under DDP every rank reads its own share of each split (scvi-tools' sampler)
            distributed_sampler=use_distributed_sampler(trainer_kwargs.get("strategy")),
        )
        plan = self._training_plan_cls(
            self.module, **{**self._plan_defaults, **(plan_kwargs or {})}
        )
        trainer_kwargs.setdefault("check_val_every_n_epoch", 1 if len(val_idx) else None)
        if not len(val_idx):
            # no validation loop at all: a run resumed from a checkpoint would otherwise ask
            # for the (missing) validation loader and fail
            trainer_kwargs.setdefault("limit_val_batches", 0)
        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if early_stopping:  # Lightning's, which logs; scvi-tools' prints to stdout
            floor = epochs_for_steps(self.min_patience_steps, len(train_idx), batch_size)
            patience = max(early_stopping_patience, floor)
            callbacks.append(EarlyStopping("validation_loss", patience=patience))
        if restore_best and len(val_idx):
            warm = getattr(self.module, "linear", None) is not None  # starts at a fitted model
            callbacks.append(
                RestoreBestWeights(
                    "validation_loss", initial=warm, initial_keys=self._initial_restore_keys
                )
            )
        trainer_kwargs["callbacks"] = callbacks
        self.module.temperature.fill_(1.0)
        with lightning_noise_filtered():
            runner = self._train_runner_cls(
                self,
                training_plan=plan,
                data_splitter=splitter,
                max_epochs=max_epochs,
                accelerator=accelerator,
                devices=devices,
                early_stopping=False,
                enable_progress_bar=enable_progress_bar,
                **trainer_kwargs,
            )
            result = runner()
        self._report_stop(callbacks, max_epochs)
        self._after_training(train_idx, val_idx, seed, novelty, temperature_scaling, unknown_rate)
        return result

    def _after_training(
        self,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        seed: int | None,
        novelty: bool,
        temperature_scaling: bool,
        unknown_rate: float,
    ) -> None:
        """Fit what comes after the weights: novelty score, temperature, Unknown thresholds."""
        if novelty:
            self._fit_novelty(np.sort(train_idx), seed)
        if len(val_idx):
            if temperature_scaling:
                self._fit_temperature(np.sort(val_idx))
            self._fit_unknown_threshold(np.sort(val_idx), unknown_rate)

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

    def _fit_temperature(self, val_idx: np.ndarray) -> None:
        """Temperature scaling (Guo et al. 2017): one scalar T minimising the validation NLL."""
        _, logits = self._forward_chunks(
            self.adata[val_idx],
            None,
            1024,
            lambda x, extra: self.module.inference(x, **extra)["logits"],
        )
        labels = torch.as_tensor(self._train_labels()[val_idx], dtype=torch.long)
        logits = torch.as_tensor(logits, dtype=torch.float64)
        log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200)

        def closure():
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), labels)
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        temperature = float(log_t.detach().exp().clamp(0.05, 20.0))
        self.module.temperature.fill_(temperature)
        logger.info(
            "Temperature scaling on %d validation cells: T = %.3f.", len(val_idx), temperature
        )

    def _fit_novelty(self, train_idx: np.ndarray, seed: int | None) -> None:
        """Fit the novelty score on (a subsample of at most ``max_reference``) training cells."""
        scorer = self.module.novelty
        if len(train_idx) > scorer.max_reference:
            rng = np.random.default_rng(seed)
            train_idx = np.sort(rng.choice(train_idx, scorer.max_reference, replace=False))
        blocks = [
            block
            for _, block in pp.iter_lognorm_chunks(
                self._training_matrix(),
                self.input_kind_,
                train_idx,
                library=self._library(self.adata),
            )
        ]
        scorer.fit(np.concatenate(blocks), seed=seed)
        logger.info(
            "Novelty score fit on %d training cells (%d principal axes).",
            len(train_idx),
            scorer.components.shape[1],
        )

    def _validation_summary(self, val_idx: np.ndarray) -> dict:
        """Predictive summary of training-data cells, sampled as :meth:`predict` does by default."""
        return self._predict_summary(
            self.adata[val_idx], None, 1024, self.mc_samples_default, False
        )[1]

    def _fit_unknown_threshold(self, val_idx: np.ndarray, rate: float) -> None:
        """Thresholds making a cell "Unknown", from quantiles on validation cells.

        Confidence below its ``rate / 2`` quantile, or novelty above its ``1 - rate / 2`` quantile
        (confidence alone, at ``rate``, without a novelty score): so at most ``rate`` of cells of
        the known types are rejected (the false-rejection rate).
        Bayesian models use :attr:`mc_samples_default` samples, as :meth:`predict` does.
        """
        summary = self._validation_summary(val_idx)
        scorer = self.module.novelty
        share = rate / 2 if scorer.is_fitted else rate
        threshold = float(np.quantile(summary["confidence"], share))
        self.module.unknown_threshold.fill_(threshold)
        message = f"confidence < {threshold:.3f}"
        if scorer.is_fitted:
            novelty_threshold = float(np.quantile(summary["novelty"], 1 - share))
            scorer.threshold.fill_(novelty_threshold)
            message += f" or novelty > {novelty_threshold:.2f}"
        logger.info("Unknown: %s (at most %.0f%% of validation cells).", message, 100 * rate)

    @property
    def mc_samples_default(self) -> int | None:
        """Monte-Carlo samples used by default: 30 for models with Bayesian layers, else none."""
        return 30 if self.module.bayesian_layers else None

    @staticmethod
    def _default_max_epochs(n_train: int, batch_size: int) -> int:
        """About 2,000 optimisation steps for small data, at least 5 epochs for large data."""
        return int(np.clip(epochs_for_steps(2000, n_train, batch_size), 5, 200))

    @staticmethod
    def _split(idx: np.ndarray, y: np.ndarray, validation_size: float, seed: int | None):
        if validation_size <= 0:
            return idx, np.array([], dtype=int)
        if not 0 < validation_size < 1:
            raise ValueError(f"validation_size must be in [0, 1), got {validation_size}.")
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

    # -- inference -------------------------------------------------------------------------------
    def _resolve(
        self,
        adata: ad.AnnData | None,
        layer: str | None,
        min_gene_coverage: float = 0.5,
        library_size_key: str | None = None,
    ) -> Resolved:
        """Validate an AnnData for inference: the data, its matrix, kind, alignment, library."""
        if adata is None:
            adata = self.adata if self.adata is not None else self._query_adata
            if adata is None:
                raise ValueError("Pass adata=...: this model was loaded without data.")
        adata = self._expression_adata(adata)
        if not isinstance(adata, ad.AnnData):
            raise pp.InputError(f"Expected an AnnData or MuData, got {type(adata).__name__}.")
        if layer is None:
            setup_layer = self._layer
            if setup_layer is not None and setup_layer in adata.layers:
                layer = setup_layer
            elif setup_layer is not None:
                logger.info("Layer %r not in this AnnData; reading adata.X.", setup_layer)
        pp.check_var_names(adata)
        if not 0 <= min_gene_coverage <= 1:
            raise ValueError(f"min_gene_coverage must be in [0, 1], got {min_gene_coverage}.")
        kind = pp.check_expression(adata, layer, allow_empty_cells=True)
        if kind != self.input_kind_:
            logger.debug("The model was trained on %s, this data holds %s.", self.input_kind_, kind)
        alignment = pp.align_genes(self.var_names, adata.var_names, min_coverage=min_gene_coverage)
        X = pp.get_matrix(adata, layer)
        library = self._library(adata, library_size_key) if kind == "counts" else None
        return Resolved(adata, X, kind, alignment, library)

    @torch.inference_mode()
    def _forward_chunks(
        self, adata, layer, batch_size: int, fn, **options
    ) -> tuple[ad.AnnData, np.ndarray]:
        """Apply ``fn(x, extra)`` to log-normalised chunks of the aligned data.

        ``options``: ``min_gene_coverage`` and ``library_size_key`` of :meth:`_resolve`.
        """
        self._check_if_trained(warn=True)
        data = self._resolve(adata, layer, **options)
        device = next(self.module.parameters()).device
        batch_size = self._inference_batch_size(batch_size)
        was_training = self.module.training
        self.module.eval()
        try:
            outs = [
                fn(
                    torch.as_tensor(block, device=device),
                    self._extra_inputs(data.adata, idx, device),
                )
                .cpu()
                .numpy()
                for idx, block in pp.iter_lognorm_chunks(
                    data.X,
                    data.kind,
                    alignment=data.alignment,
                    chunk_size=batch_size,
                    library=data.library,
                )
            ]
        finally:
            self.module.train(was_training)  # a later train() must not run with dropout off
        return data.adata, np.concatenate(outs, axis=0)

    def _inference_batch_size(self, batch_size: int) -> int:
        """Cells per forward pass at inference (models with long inputs may lower it)."""
        return batch_size

    def _extra_inputs(self, adata: ad.AnnData, idx: np.ndarray, device) -> dict:
        """Return inputs besides expression for the cells ``idx`` (e.g. batch codes)."""
        return {}

    def _latent(self, x: torch.Tensor, extra: dict) -> torch.Tensor:
        return self.module.inference(x, **extra)["z"]

    def _predict_summary(self, adata, layer, batch_size, mc_samples, mc_dropout, **options):
        """Mean probabilities, their std, entropy, mutual information and confidence per cell.

        Also ``empty``: cells without any measured expression on the model's genes.
        """
        n = 1 if mc_samples is None else int(mc_samples)
        if n < 1:
            raise ValueError(f"mc_samples must be at least 1, got {mc_samples}.")
        sampled = mc_samples is not None or mc_dropout
        n_classes = self.n_classes

        def fn(x, extra):
            if not sampled:
                logits = self.module.inference(x, **extra)["logits"][None]
            else:
                with mc_sampling(self.module, dropout=mc_dropout):
                    logits = torch.stack(
                        [self.module.inference(x, **extra)["logits"] for _ in range(n)]
                    )
            s = predictive_summary(logits.float() / self.module.temperature)
            novelty = self.module.novelty(x)
            empty = torch.nan_to_num(x, nan=0.0).abs().sum(dim=1) == 0
            columns = [s["entropy"], s["mutual_info"], novelty, empty.float()]
            return torch.cat([s["probs"], s["std"], torch.stack(columns, dim=1)], dim=1)

        adata, out = self._forward_chunks(adata, layer, batch_size, fn, **options)
        probs = out[:, :n_classes]
        return adata, {
            "probs": probs,
            "std": out[:, n_classes : 2 * n_classes],
            "entropy": out[:, 2 * n_classes],
            "mutual_info": out[:, 2 * n_classes + 1],
            "novelty": out[:, 2 * n_classes + 2],
            "empty": out[:, 2 * n_classes + 3] > 0.5,
            "confidence": probs.max(axis=1),
            "sampled": sampled,
        }

    def predict(
        self,
        adata: ad.AnnData | None = None,
        soft: bool = False,
        layer: str | None = None,
        batch_size: int = 1024,
        key_prefix: str | None = DEFAULT_PREFIX,
        mc_samples: int | None = None,
        mc_dropout: bool = False,
        reject_unknown: bool = False,
        min_gene_coverage: float = 0.5,
        library_size_key: str | None = None,
        majority_voting: bool = False,
        over_clustering: str | np.ndarray | None = None,
    ) -> np.ndarray | pd.DataFrame | tuple[pd.DataFrame, pd.DataFrame]:
        """Predict cell types, with uncertainty.

        Genes are aligned to the model's by name. Genes of the model that the query lacks are
        *unmeasured*, not zero: the linear model imputes their training mean, tokenizers give
        them no token. Counts are log-normalised with each cell's library size over all of its
        genes (or ``library_size_key``). Cells without any expression on the model's genes are
        labelled ``"Unknown"`` with NaN confidence (and counted in a warning).

        Parameters
        ----------
        adata
            Cells to annotate; the training data (or the data given to :meth:`load`) when ``None``.
        soft
            Return class probabilities instead of labels.
        layer
            Layer to read; by default the layer given to ``setup_anndata`` when present, else ``X``.
        batch_size
            Cells per forward pass.
        key_prefix
            Write ``obs[f"{key_prefix}_prediction"]``, ``_confidence`` (top mean probability),
            ``_entropy`` (total predictive entropy, nats), with samples ``_mutual_info``
            (epistemic part), ``_novelty`` (distance to the training cells, see ``train``) and,
            once thresholds were fit in training, ``_unknown``; ``None`` writes nothing. Columns
            of an earlier prediction under the same prefix are removed first.
        mc_samples
            Monte-Carlo samples of the Bayesian layers (and of dropout with ``mc_dropout``);
            *probabilities* are averaged over samples. Default: 30 for models with Bayesian
            layers, a single deterministic pass otherwise.
        mc_dropout
            Keep dropout active while sampling (MC dropout; works for any model).
        reject_unknown
            Label cells ``"Unknown"`` whose confidence is below, or whose novelty is above, the
            thresholds chosen on the validation split.
        min_gene_coverage
            Least share of the model's genes the query must have; below it an error says how to
            train a model on the shared genes instead.
        library_size_key
            ``obs`` column of ``adata`` with whole-transcriptome library sizes (counts only);
            default: the column named in ``setup_anndata`` when ``adata`` has it.
        majority_voting
            Also over-cluster the query (Leiden on a kNN graph of the model's latent space, as
            CellTypist does) and give every cell its cluster's most frequent label: written to
            ``obs[f"{key_prefix}_majority_voting"]`` beside the per-cell labels, with the
            clusters in ``_over_clustering``. Returned labels stay per cell.
        over_clustering
            With ``majority_voting``: an ``obs`` column (or an array) with the query's own
            clusters to vote in, instead of computing them.

        Returns
        -------
        Predicted labels (array of str, one per cell) or, with ``soft=True``, a DataFrame of
        probabilities (cells × cell types) indexed by ``obs_names`` — with Monte-Carlo samples,
        a pair ``(mean, std)`` of such DataFrames.
        """
        if mc_samples is None and mc_dropout:
            mc_samples = 30
        if mc_samples is None:
            mc_samples = self.mc_samples_default
        if reject_unknown and not np.isfinite(float(self.module.unknown_threshold)):
            raise ValueError(
                "No Unknown threshold: train with a validation split (validation_size > 0)."
            )
        options = {"min_gene_coverage": min_gene_coverage, "library_size_key": library_size_key}
        adata, summary = self._predict_summary(
            adata, layer, batch_size, mc_samples, mc_dropout, **options
        )
        probs, confidence = summary["probs"], summary["confidence"].astype(np.float32)
        classes = np.asarray(self.classes, dtype=object)
        labels = classes[probs.argmax(axis=1)]
        unknown = self._unknown(confidence, summary["novelty"])
        if reject_unknown:
            labels = labels.copy()
            labels[unknown] = UNKNOWN
        empty = summary["empty"]
        if empty.any():
            logger.warning(
                "%d of %d cells have no expression on the model's genes: labelled %r, "
                "confidence NaN.",
                int(empty.sum()),
                len(empty),
                UNKNOWN,
            )
            labels = labels.copy()
            labels[empty] = UNKNOWN
            confidence[empty] = np.nan
            probs = probs.copy()
            probs[empty] = np.nan
            if unknown is not None:
                unknown = unknown | empty
        voting = None
        if majority_voting:
            from ._voting import majority_vote, over_cluster

            if over_clustering is None:
                latent = self.get_latent_representation(
                    adata, layer, batch_size, key_prefix=None, **options
                )
                clusters = over_cluster(latent)
            elif isinstance(over_clustering, str):
                if over_clustering not in adata.obs:
                    raise pp.InputError(
                        f"over_clustering={over_clustering!r} is not a column of obs."
                    )
                clusters = adata.obs[over_clustering].astype(str).to_numpy()
            else:
                clusters = np.asarray(over_clustering).astype(str)
                if len(clusters) != adata.n_obs:
                    raise pp.InputError(
                        f"over_clustering has {len(clusters)} values for {adata.n_obs} cells."
                    )
            voting = (clusters, majority_vote(labels, clusters))
        if key_prefix is not None:
            obs = adata.obs
            stale = [f"{key_prefix}_{c}" for c in PREDICTION_COLUMNS if f"{key_prefix}_{c}" in obs]
            obs.drop(columns=stale, inplace=True)
            has_unknown = reject_unknown or empty.any()
            categories = [*self.classes, UNKNOWN] if has_unknown else self.classes
            obs[f"{key_prefix}_prediction"] = pd.Categorical(labels, categories=categories)
            obs[f"{key_prefix}_confidence"] = confidence
            obs[f"{key_prefix}_entropy"] = summary["entropy"].astype(np.float32)
            if summary["sampled"]:
                obs[f"{key_prefix}_mutual_info"] = summary["mutual_info"].astype(np.float32)
            if self.module.novelty.is_fitted:
                obs[f"{key_prefix}_novelty"] = summary["novelty"].astype(np.float32)
            if unknown is not None:
                obs[f"{key_prefix}_unknown"] = unknown
            if voting is not None:
                obs[f"{key_prefix}_over_clustering"] = pd.Categorical(voting[0])
                obs[f"{key_prefix}_majority_voting"] = pd.Categorical(
                    voting[1], categories=categories
                )
        if soft:
            frame = pd.DataFrame(probs, index=adata.obs_names.copy(), columns=self.classes)
            if summary["sampled"]:
                std = pd.DataFrame(summary["std"], index=frame.index, columns=self.classes)
                return frame, std
            return frame
        return labels

    def _unknown(self, confidence: np.ndarray, novelty: np.ndarray) -> np.ndarray | None:
        """Cells rejected by the thresholds fit in training (``None`` when none was fit)."""
        threshold = float(self.module.unknown_threshold)
        if not np.isfinite(threshold):
            return None
        unknown = confidence < threshold
        novelty_threshold = float(self.module.novelty.threshold)
        if np.isfinite(novelty_threshold):
            unknown |= novelty > novelty_threshold
        return unknown

    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        layer: str | None = None,
        batch_size: int = 1024,
        key_prefix: str | None = DEFAULT_PREFIX,
        min_gene_coverage: float = 0.5,
        library_size_key: str | None = None,
    ) -> np.ndarray:
        """Cell embeddings, written to ``obsm[f"X_{key_prefix}"]`` unless ``key_prefix`` is None.

        Use it as ``sc.pp.neighbors(adata, use_rep="X_cellformer")``. ``min_gene_coverage`` and
        ``library_size_key``: see :meth:`predict`.
        """
        adata, z = self._forward_chunks(
            adata,
            layer,
            batch_size,
            self._latent,
            min_gene_coverage=min_gene_coverage,
            library_size_key=library_size_key,
        )
        if key_prefix is not None:
            adata.obsm[f"X_{key_prefix}"] = z
        return z

    # -- save / load ------------------------------------------------------------------------------
    def save(self, dir_path: str, overwrite: bool = False, **kwargs) -> None:
        """Save the model to ``dir_path`` (a directory), with the cellformer version.

        ``overwrite=True`` replaces an existing model there. Other arguments go to scvi-tools'
        ``save`` (the training data are not saved unless ``save_anndata=True``).
        """
        from cellformer import __version__

        self.cellformer_version_ = __version__
        super().save(dir_path, overwrite=overwrite, **kwargs)

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: ad.AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        min_gene_coverage: float = 0.5,
    ):
        """Load a saved model; ``adata`` (optional) becomes the default data for prediction.

        Unlike scvi-tools' ``load``, ``adata`` may have other genes, another gene order, or no
        labels: genes are aligned by name at prediction time and the coverage is reported here
        (an error below ``min_gene_coverage``).
        """
        from ._saved import check_saved_model, load_errors

        check_saved_model(dir_path, prefix, cls.__name__)
        with load_errors(dir_path):
            model = super().load(
                dir_path, adata=False, accelerator=accelerator, device=device, prefix=prefix
            )
        from ._saved import check_version

        check_version(model, dir_path)
        if adata is not None:
            # validate and report gene coverage now, not at predict
            model._resolve(adata, None, min_gene_coverage=min_gene_coverage)
            model._query_adata = adata
        return model

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
