"""Registering data with a cellformer model: ``setup_anndata``/``setup_mudata`` and the registry."""

from __future__ import annotations

import contextlib
import contextvars
import logging
import warnings

import anndata as ad
import numpy as np
import pandas as pd
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

from cellformer import _core, pp
from cellformer._core.options import parameter_names
from cellformer._errors import ParameterError

__all__ = ["SetupMixin", "internal_setup"]

logger = logging.getLogger("cellformer")


def _drop_unused_categories(adata: ad.AnnData, labels_key: str, unlabeled_category) -> None:
    """Drop categories of the labels column without cells (no 0-cell class), with a notice.

    The column's values do not change; only its list of categories does.
    """
    col = adata.obs[labels_key]
    if not isinstance(col.dtype, pd.CategoricalDtype):
        return
    used = set(col.dropna().unique())
    unused = [c for c in col.cat.categories if c not in used and c != unlabeled_category]
    if unused:
        logger.warning(
            "adata.obs[%r] has categories without cells, dropped from the classes: %s.",
            labels_key,
            ", ".join(map(repr, unused[:10])) + (" ..." if len(unused) > 10 else ""),
        )
        adata.obs[labels_key] = col.cat.remove_categories(unused)


#: True inside :func:`internal_setup`: a setup of cells cellformer made itself, not the user's.
_INTERNAL = contextvars.ContextVar("cellformer_internal_setup", default=False)


@contextlib.contextmanager
def internal_setup():
    """Mark setups of cells cellformer builds itself, not the user's labels.

    Placeholders, the linear path's training cells, pseudo-labels: the notices about the user's
    labels are not repeated for them.
    """
    token = _INTERNAL.set(True)
    try:
        yield
    finally:
        _INTERNAL.reset(token)


def _register(manager: AnnDataManager, data, labels, unlabeled_category, **kwargs) -> None:
    """``manager.register_fields``, with scvi-tools' small-category warning in cellformer's words.

    scvi-tools warns "Category 7 in adata.obs['_scvi_labels'] has fewer than 3 cells" (an internal
    code and column); the same fact is logged here once, with the cell types' names.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"Category .* has fewer than 3 cells", category=UserWarning
        )
        manager.register_fields(data, **kwargs)
    if labels is None or _INTERNAL.get():
        return
    counts = _label_counts(labels, unlabeled_category)
    small = counts[counts < 3]
    if len(small):
        logger.warning(
            "%d cell types with fewer than 3 labelled cells (a model learns little from them; "
            "merge them into a broader type or label more cells): %s%s.",
            len(small),
            ", ".join(f"{name!r} ({n})" for name, n in small.head(10).items()),
            " ..." if len(small) > 10 else "",
        )


def _label_counts(labels, unlabeled_category) -> pd.Series:
    counts = pd.Series(np.asarray(labels)).astype(str).value_counts()
    return counts[counts.index != str(unlabeled_category)]


def check_not_an_id_column(labels, labels_key: str, unlabeled_category) -> None:
    """Refuse a label column in which most labels have a single cell: an ID, not cell types."""
    counts = _label_counts(labels, unlabeled_category)
    singles = int((counts == 1).sum())
    if len(counts) > 10 and singles > len(counts) / 2:
        raise _core.InputError(
            f"adata.obs[{labels_key!r}] looks like an ID column, not cell types: {singles} of "
            f"its {len(counts)} labels belong to one cell each (e.g. "
            f"{', '.join(map(repr, counts.index[-3:]))}). Pass the column of curated cell types "
            "as labels_key."
        )


class SetupMixin:
    """``setup_anndata``, ``setup_mudata`` and what a model reads back from its registry."""

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
            raise _core.InputError(
                "labels_key is required: name the column of adata.obs that holds the cell types, "
                "e.g. setup_anndata(adata, labels_key='cell_type')."
            )
        pp.validate_anndata(adata, layer, labels_key, unlabeled_category=unlabeled_category)
        if adata.obs[labels_key].isna().any():
            n = int(adata.obs[labels_key].isna().sum())
            raise _core.InputError(
                f"adata.obs[{labels_key!r}] has {n} missing values. Mark unlabelled cells explicitly: "
                f"adata.obs[{labels_key!r}] = adata.obs[{labels_key!r}].astype(str)"
                f".where(adata.obs[{labels_key!r}].notna(), {unlabeled_category!r})."
            )
        if batch_key is not None and batch_key not in adata.obs:
            raise _core.InputError(
                f"batch_key={batch_key!r} is not a column of adata.obs. Available: {list(adata.obs.columns)}."
            )
        if not _INTERNAL.get():
            check_not_an_id_column(adata.obs[labels_key], labels_key, unlabeled_category)
        _drop_unused_categories(adata, labels_key, unlabeled_category)
        if library_size_key is not None:
            _core.check_library_sizes(adata, library_size_key)
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
        _register(manager, adata, adata.obs[labels_key], unlabeled_category, **kwargs)
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
            raise _core.InputError(
                f"setup_mudata needs a MuData, got {type(mdata).__name__}; use setup_anndata."
            )
        modalities = {"rna_layer": "rna", **(modalities or {})}
        unknown = set(modalities) - {"rna_layer", "labels_key", "batch_key"}
        if unknown:
            raise _core.InputError(
                f"Unknown modalities keys {sorted(unknown)}; use rna_layer, labels_key, batch_key."
            )
        for key, mod in modalities.items():
            if mod is not None and mod not in mdata.mod:
                raise _core.InputError(
                    f"modalities[{key!r}]={mod!r} is not a modality of this MuData; it has "
                    f"{list(mdata.mod)}."
                )
        rna = mdata[modalities["rna_layer"]]
        if rna.n_obs != mdata.n_obs:
            raise _core.InputError(
                f"The RNA modality has {rna.n_obs} cells, the MuData {mdata.n_obs}: keep the cells "
                "shared by all modalities first (muon.pp.intersect_obs(mdata))."
            )
        if labels_key is None:
            raise _core.InputError("labels_key is required: the obs column with the cell types.")
        labels_obs = mdata[modalities["labels_key"]].obs if "labels_key" in modalities else None
        obs = labels_obs if labels_obs is not None else mdata.obs
        _core.check_var_names(rna)
        pp.check_expression(rna, rna_layer)
        _core.check_labels(ad.AnnData(obs=obs), labels_key, unlabeled_category=unlabeled_category)
        check_not_an_id_column(obs[labels_key], labels_key, unlabeled_category)
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
        _register(manager, mdata, obs[labels_key], unlabeled_category, **kwargs)
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
                raise _core.InputError(
                    f"This MuData has no modality {mod!r} (it has {list(adata.mod)})."
                )
            return adata[mod]
        return adata

    def _training_matrix(self):
        """Expression matrix of the registered training data."""
        return _core.get_matrix(self._expression_adata(self.adata), self._layer)

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
                if key == _core.LIBRARY_KEY:  # cellformer's column of a reference on shared genes:
                    return None  # a query's own sums are its whole-transcriptome sizes
                logger.warning(
                    "The model was trained with library sizes from obs[%r]; this data has no "
                    "such column, so each cell's sum over its own %d genes is used. If it holds "
                    "only some of its genes (e.g. the variable ones), pass library_size_key= "
                    "with each cell's whole-transcriptome total.",
                    key,
                    adata.n_vars,
                )
                return None
        return None if key is None else _core.check_library_sizes(adata, key)

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

    def _train_parameters(self) -> list[str]:
        """Names of ``train``'s own parameters, of this class's ``train`` and those it extends."""
        methods = [vars(cls)["train"] for cls in type(self).__mro__ if "train" in vars(cls)]
        return sorted(set().union(*map(parameter_names, methods)))

    def _check_can_train(
        self, validation_size: float, temperature_scaling: bool, early_stopping: bool
    ) -> None:
        """Refuse to train without data, on stale label codes, or without a needed validation split."""
        if self.adata is None or self.adata_manager is None:
            raise _core.InputError(
                "This model has no registered training data (it was loaded for prediction). "
                "Create a new model from an AnnData set up with setup_anndata to train."
            )
        self._check_registry_current()
        if temperature_scaling and validation_size <= 0:
            raise ParameterError(
                "temperature_scaling needs a validation split: validation_size > 0."
            )
        if early_stopping and validation_size <= 0:
            raise ParameterError(
                "early_stopping needs a validation split: set validation_size > 0."
            )

    def _check_registry_current(self) -> None:
        """Refuse to train on an AnnData that ``setup_anndata`` registered again since.

        ``setup_anndata`` writes the label codes into ``adata.obs``; run again (e.g. with another
        ``labels_key``) it would make this model train on codes of other classes.
        """
        from scvi.data._constants import _MANAGER_UUID_KEY

        current = self.adata.uns.get(_MANAGER_UUID_KEY)
        if current is not None and current != self.adata_manager.id:
            raise _core.InputError(
                "setup_anndata was run on this AnnData again after the model was built "
                f"(the model was built with labels_key={self.labels_key!r}); its label codes "
                "no longer match the model's classes. Build a new model after setup_anndata, "
                f"or run {type(self).__name__}.setup_anndata(adata, labels_key="
                f"{self.labels_key!r}, ...) again before training this one."
            )
