"""CellTransformer: a transformer cell-type classifier with exchangeable tokenizers."""

from __future__ import annotations

import copy
import logging
from typing import Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from cellformer import _core
from cellformer._docs import ENCODER_PARAMS, share_docs
from cellformer._utils import epochs_for_steps, seeded
from cellformer.module import TransformerModule
from cellformer.nn import EncoderConfig, get_encoder_config
from cellformer.tokenizers import get_config, project_table

from . import _from_pretrained, _pruning
from ._linear_path import LinearPathMixin
from ._scbert import is_scbert_file, scbert_from_file
from .base import CellformerModel, register_checkpoint
from .base._outputs import sorted_passes

__all__ = ["CellTransformer"]

logger = logging.getLogger("cellformer")


@share_docs(encoder_params=ENCODER_PARAMS)
class CellTransformer(LinearPathMixin, CellformerModel):
    """Transformer cell-type classifier over gene tokens, with the scvi-tools model API.

    A cell is tokenised (see :mod:`cellformer.tokenizers`), encoded by pre-LayerNorm transformer
    blocks, pooled (mean over gene tokens, or ``<cls>``) and classified. The pooled vector is the
    latent representation. Tokenizer statistics (gene medians, HVGs) are fit on the training cells
    only and saved with the model.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    tokenizer
        Preset name (``"default"``, ``"geneformer"``, ``"scgpt"``, ``"scbert"``), a dict of
        :class:`~cellformer.tokenizers.TokenizerConfig` fields (``{"preset": "scgpt",
        "max_length": 512}`` works) or a config.
    encoder
        The network (encoder, pooling, head): an :class:`~cellformer.nn.EncoderConfig`, a preset
        name of :data:`~cellformer.nn.ENCODER_PRESETS` (``"default"``, ``"small"``,
        ``"scbert"``) or a dict of its fields (``{"preset": "small", "n_layers": 2}``). Its
        fields, listed under *Other Parameters*, may also be given as keywords, applied over it:
        ``CellTransformer(adata, d_model=32, attention="performer")``.
    class_balance
        Weight the loss by inverse class frequency on the training cells.
    gene_embeddings
        DataFrame of gene vectors indexed by gene name (gene2vec, protein language models ...),
        used when the tokenizer has ``gene_encoder="table"``; reduced to ``d_model`` by PCA. Genes
        missing from it get learned vectors.
    freeze_gene_embeddings
        Keep the table vectors fixed during training.
    seed
        Seed of the weight initialisation (the global random state is left alone); ``None``
        draws from the global state.
    registry, input_kind
        Internal (used by :meth:`load`).

    Other Parameters
    ----------------
    {encoder_params}

    Examples
    --------
    >>> import cellformer as cf
    >>> adata = cf.datasets.pbmc68k_reduced()
    >>> cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
    >>> model = cf.model.CellTransformer(adata, tokenizer="default")
    >>> model.train()
    >>> model.predict()  # writes adata.obs["cellformer_prediction"]
    >>> model.get_latent_representation()  # writes adata.obsm["X_cellformer"]
    """

    _module_cls = TransformerModule
    _plan_defaults = {"lr": 3e-3, "weight_decay": 0.01, "warmup_fraction": 0.05}
    #: Early stopping (when asked for) waits at least this many optimiser steps: with ~100
    #: labelled cells an epoch is 2 steps, and 8 epochs of patience would stop a fine-tuned
    #: encoder a few steps in, with an untrained head.
    min_patience_steps = 60

    # masked-expression pretraining and pretrained encoders (code in model/_from_pretrained.py);
    # load() also gives back the published checkpoints' models (register_checkpoint)
    _loads_checkpoints = True
    pretrain = _from_pretrained.pretrain_method
    from_pretrained = _from_pretrained.from_pretrained
    _freeze_pretrained = _from_pretrained._freeze_pretrained
    # structured pruning (code in model/_pruning.py)
    prune = _pruning.prune
    pruning_report = _pruning.pruning_report
    _validation_macro_f1 = _pruning._validation_macro_f1
    _flops_per_cell = _pruning._flops_per_cell

    @property
    def _warm_start_keys(self) -> tuple[str, ...] | None:
        # with the linear path the zero head gives the linear model's predictions: when no
        # epoch beats them, the zero head is restored (the encoder keeps what it learned)
        return ("head.",) if self.module.linear is not None else None

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        tokenizer: str | dict = "default",
        encoder: str | dict | EncoderConfig | None = None,
        class_balance: bool = True,
        gene_embeddings: pd.DataFrame | None = None,
        freeze_gene_embeddings: bool = False,
        seed: int | None = 0,
        registry: dict | None = None,
        input_kind: Literal["counts", "lognorm"] | None = None,
        **encoder_options,
    ):
        network = get_encoder_config(encoder, **encoder_options)
        super().__init__(adata, registry=registry, input_kind=input_kind)
        config = get_config(tokenizer)
        tokenizer = config.to_dict()
        table = None
        if gene_embeddings is not None:
            if config.gene_encoder != "table":
                config = get_config(config, gene_encoder="table")
                tokenizer = config.to_dict()
            table = project_table(gene_embeddings, self.var_names, network.d_model)
        n_batches = 0
        if "batch" in config.context:
            if self._setup_args.get("batch_key") is None:
                raise _core.InputError(
                    "The tokenizer adds batch tokens (context=('batch',)) but no batch_key was "
                    "given: call setup_anndata(adata, ..., batch_key='batch')."
                )
            n_batches = len(self._batch_categories)
        with seeded(seed):  # the same initialisation for the same seed, caller's state kept
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_labels=self.n_classes,
                gene_names=self.var_names,
                tokenizer=config,
                input_kind=self.input_kind_,
                n_batches=n_batches,
                encoder=network,
                gene_table=table,
                freeze_gene_table=freeze_gene_embeddings,
                class_balance=class_balance,
            )
        # saved as one dict of every field (models saved with the fields as keywords still load)
        encoder = self.module.config.to_dict()
        encoder_options = {}
        input_kind = self.input_kind_
        self.init_params_ = self._get_init_params(locals())

    @property
    def encoder_config(self) -> EncoderConfig:
        """The network's :class:`~cellformer.nn.EncoderConfig` (pooling resolved)."""
        return self.module.config

    def _record_init_params(self, **changes) -> None:
        """Record changed architecture fields (pruning, a Bayesian head), so that load builds them."""
        params = self.init_params_["non_kwargs"]
        params["encoder"] = {**params["encoder"], **changes}
        self.module.config = self.module.config.replace(**changes)

    # -- data hooks ------------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """The fitted :class:`~cellformer.tokenizers.Tokenizer`."""
        return self.module.tokenizer

    @property
    def _batch_categories(self) -> list[str]:
        state = self.registry_["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
        return [str(c) for c in state["categorical_mapping"]]

    #: Set by :meth:`from_pretrained`: keep the pretrained tokenizer statistics and gene graph.
    _keep_tokenizer_statistics: bool = False

    def _fit_training_statistics(self, train_idx: np.ndarray) -> None:
        super()._fit_training_statistics(train_idx)  # the linear path
        if self._keep_tokenizer_statistics:
            return
        self.module.fit_statistics(
            self._training_matrix(), self.input_kind_, train_idx, self._library(self.adata)
        )

    def _extra_inputs(self, adata: ad.AnnData, idx: np.ndarray, device) -> dict:
        if self.module.tokenizer.n_batches == 0:
            return {}
        key = self._setup_args["batch_key"]
        categories = self._batch_categories
        if key not in adata.obs:
            logger.warning("No obs[%r] in this AnnData: using batch %r.", key, categories[0])
            codes = np.zeros(len(idx), dtype=np.int64)
        else:
            values = adata.obs[key].astype(str).to_numpy()[idx]
            codes = pd.Index(categories).get_indexer(values)
            if (codes < 0).any():
                logger.warning(
                    "%d cells have batches unseen in training; they get batch %r.",
                    int((codes < 0).sum()),
                    categories[0],
                )
                codes = np.maximum(codes, 0)
        return {"batch_index": torch.as_tensor(codes, device=device)}

    #: Most tokens (cells × tokens per cell) in one inference forward pass.
    max_inference_tokens: int = 2**21

    #: Cells per forward pass at inference: a chunk is sorted by its cells' token counts and cut
    #: into passes of this many, so that each pass pads to a length close to its cells' own
    #: (CPU attention slows down with larger passes; ``benchmarks/speed.py`` measures it).
    inference_pass_cells: int = 64

    def _apply_in_passes(self, fn, x: torch.Tensor, extra: dict) -> torch.Tensor:
        candidates = (x > 0) if self.tokenizer.config.drop_zeros else ~torch.isnan(x)
        return sorted_passes(fn, x, extra, candidates.sum(1), self.inference_pass_cells)

    def _inference_batch_size(self, batch_size: int) -> int:
        """Cap cells per pass so that long sequences fit in memory.

        1,024 cells of 14,064 tokens would need several GB per activation.
        """
        return int(max(1, min(batch_size, self.max_inference_tokens // self.tokenizer.max_tokens)))

    def tokenize(
        self,
        adata: ad.AnnData | None = None,
        layer: str | None = None,
        batch_size: int = 4096,
        min_gene_coverage: float = 0.5,
    ) -> dict[str, np.ndarray]:
        """Tokens the model sees for each cell (see :meth:`CellformerModel.tokenize`).

        Genes of the model that ``adata`` lacks get no token. ``ids`` index :attr:`tokenizer`
        ``.vocabulary``; ``values`` are the log-normalised values (z-scores with
        ``value_scale="zscore"``); binned expression adds ``bins``.
        """
        data = self._resolve(adata, layer, min_gene_coverage=min_gene_coverage)
        batch = None
        if self.tokenizer.n_batches:
            batch = self._extra_inputs(data.adata, np.arange(data.adata.n_obs), "cpu")
            batch = batch["batch_index"].numpy()
        tokenizer = copy.deepcopy(self.tokenizer).cpu()  # the module may live on a GPU
        out = tokenizer.transform(
            data.X,
            data.kind,
            batch=batch,
            chunk_size=batch_size,
            alignment=data.alignment,
            library=data.library,
        )
        out["tokens"] = np.asarray(tokenizer.vocabulary, dtype=object)[out["ids"]]
        out["obs_names"] = np.asarray(data.adata.obs_names)
        return out

    def _describe(self) -> str:
        cfg = self.module.tokenizer.config
        enc = self.module.encoder
        d_model = self.module.head[-1].in_features
        return (
            f"order={cfg.order}, expression={cfg.expression}, max_length={cfg.max_length}, "
            f"{len(enc.layers)} layer(s) d_model={d_model}, pooling={self.module.pooling}, "
            f"attention={type(enc.layers[0].attn.kernel).__name__}"
        )

    def train(
        self,
        max_epochs: int | None = None,
        batch_size: int = 64,
        validation_size: float = 0.1,
        early_stopping: bool = False,
        early_stopping_patience: int = 8,
        restore_best: bool | None = None,
        stage_b: dict | None = None,
        **kwargs,
    ):
        """Train; see :meth:`CellformerModel.train`.

        By default a fixed budget of about 400 optimiser steps (:attr:`default_steps`; 1,600
        without a linear path, :attr:`pure_steps`) with the learning rate annealed to zero; 10%
        of the labelled cells are held out to set the "Unknown" thresholds (and, on request, a
        temperature). Early stopping on the validation
        loss is available but off: the loss rises with over-confidence long before accuracy
        stops improving (see the changelog and ``benchmarks/latent.py``).

        Parameters
        ----------
        restore_best
            End with the weights of the epoch with the lowest validation loss (``None``: when
            ``early_stopping``).
        stage_b
            Two-stage training in one call: after this (deterministic) stage A, make the head
            Bayesian (:meth:`to_bayesian`; ``"ffn": True`` for the FFNs too, ``"prior_sigma"``,
            ``"init_sigma"``),
            fine-tune it (``"max_epochs"``, default 10, and other :meth:`train` arguments, e.g.
            ``"plan_kwargs"``), then, with ``"prune": {...}``, prune (:meth:`prune`). The same as
            calling ``train()``, ``to_bayesian()``, ``train(...)`` and ``prune(...)`` in turn.
        """
        mask_vector = getattr(self.module.embed.expression, "mask_vector", None)
        if mask_vector is not None:  # pretraining's <mask> value: no part in classifying
            mask_vector.requires_grad_(False)  # (and DDP wants a gradient for every trained one)
        result = super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            validation_size=validation_size,
            early_stopping=early_stopping and validation_size > 0,
            early_stopping_patience=early_stopping_patience,
            restore_best=early_stopping if restore_best is None else restore_best,
            **kwargs,
        )
        if stage_b is None:
            return result
        options = dict(stage_b)
        prune = options.pop("prune", None)
        self.to_bayesian(
            ffn=options.pop("ffn", False),
            prior_sigma=options.pop("prior_sigma", 1.0),
            init_sigma=options.pop("init_sigma", 0.1),
        )
        options.setdefault("max_epochs", 10)
        options.setdefault("plan_kwargs", {"lr": self._plan_defaults["lr"] / 3})
        options.setdefault("seed", kwargs.get("seed", 0))
        options.setdefault("enable_progress_bar", kwargs.get("enable_progress_bar", True))
        result = self.train(
            batch_size=batch_size,
            validation_size=validation_size,
            early_stopping=early_stopping,
            early_stopping_patience=early_stopping_patience,
            restore_best=restore_best,
            **options,
        )
        if prune:
            self.prune(**{"validation_size": validation_size, **prune})
        return result

    def to_bayesian(
        self, ffn: bool = False, prior_sigma: float = 1.0, init_sigma: float = 0.1
    ) -> CellTransformer:
        """Make the classifier head (and with ``ffn=True`` the encoder FFNs) Bayesian.

        Each linear layer becomes a :class:`~cellformer.nn.BayesianLinear` whose posterior means
        are the trained weights; the head's standard deviations start at ``init_sigma``, the
        FFNs' small (see the class's ``init_sigma``); fine-tune with
        :meth:`train` afterwards (stage B of two-stage training). Saved models load as Bayesian.
        """
        from cellformer.nn import BayesianLinear

        self._make_head_bayesian(prior_sigma, init_sigma)
        if ffn:
            for block in self.module.encoder.layers:
                for i in (0, len(block.ff) - 1):
                    if not isinstance(block.ff[i], BayesianLinear):
                        block.ff[i] = BayesianLinear.from_linear(
                            block.ff[i], prior_sigma=prior_sigma
                        )
        if ffn:
            self._record_init_params(bayesian_ffn=True)
        return self

    #: Optimiser steps of a default training run (see ``_default_max_epochs``).
    default_steps: int = 400
    #: Optimiser steps of a default run without a linear path: the head and encoder start from
    #: nothing. PBMC3k 5-fold macro-F1 of the pure transformer (``benchmarks/pure_steps.py``):
    #: 400 steps 0.872, 800 0.894, 1,600 0.912.
    pure_steps: int = 1600

    def _default_max_epochs(self, n_train: int, batch_size: int) -> int:
        """Epochs of about :attr:`default_steps` steps (:attr:`pure_steps`), 5 to 60."""
        steps = self.default_steps if self.module.linear is not None else self.pure_steps
        return int(np.clip(epochs_for_steps(steps, n_train, batch_size), 5, 60))


# an scBERT checkpoint file becomes a CellTransformer (a Performer with the "scbert" tokenizer)
register_checkpoint(
    is_scbert_file,
    CellTransformer,
    files="an scBERT checkpoint file (panglao_pretrain.pth: performer-pytorch's PerformerLM "
    "state dict; pass its gene list as genes=[...])",
    build=scbert_from_file,
)
