"""CellTransformer: a transformer cell-type classifier with exchangeable tokenizers."""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS

from cellformer import pp
from cellformer._utils import epochs_for_steps, preserved_random_state, quiet_training
from cellformer.module import TransformerModule
from cellformer.tokenizers import get_config, project_table

from ._base import CellformerModel
from ._pretrain import PretrainedEncoder, pretrain

__all__ = ["CellTransformer"]

logger = logging.getLogger("cellformer")


class CellTransformer(CellformerModel):
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
    d_model
        Token width.
    n_layers
        Encoder blocks.
    n_heads
        Attention heads.
    d_ff
        FFN hidden units (default ``2 * d_model``).
    dropout
        Dropout on token embeddings, residual branches, FFN and before the head.
    attention_dropout
        Dropout on attention probabilities (slow on CPU: it disables the fused kernel).
    pooling
        ``"mean"`` (over gene tokens), ``"cls"``, or ``"genes"`` (scBERT's gene-wise readout: one
        number per gene token, then a linear map from genes). ``None``: ``"genes"`` when every gene
        is a token (``drop_zeros=False``, e.g. the ``"scbert"`` preset), where a mean would be
        dominated by the constant zero tokens; ``"mean"`` otherwise.
    attention
        Attention kernel: ``"dense"`` (SDPA, quadratic in tokens), ``"knn"`` (each gene token
        attends to its neighbours in a gene–gene kNN graph built on the training cells, plus
        ``<cls>``; linear in tokens) or ``"performer"`` (FAVOR+ linear attention). Use ``"knn"`` or
        ``"performer"`` for thousands of tokens per cell (e.g. the ``"scbert"`` preset).
    attention_options
        Kernel options: ``{"k": 8, "max_degree": 24}`` for ``"knn"``; ``{"n_features": 128,
        "redraw_interval": 1000}`` for ``"performer"``.
    class_balance
        Weight the loss by inverse class frequency on the training cells.
    token_dropout
        Share of each cell's gene tokens hidden at random during training (augmentation).
    head
        ``"linear"`` or ``"bayesian"``: a mean-field Gaussian classifier
        (:class:`~cellformer.nn.BayesianLinear`) trained with a KL term; predict with
        ``mc_samples`` to average its samples.
    bayesian_ffn
        Make the encoder's FFN layers Bayesian too.
    prior_sigma
        Prior standard deviation of the Bayesian layers.
    init_sigma
        Initial posterior standard deviation of the Bayesian head's weights. Training moves it
        slowly: from 1e-3 the posterior stays nearly a point and the head is no better
        calibrated than softmax (PBMC3k, B / NK / CD14+ Mono held out in turn: mean ECE 0.068
        vs 0.064); from 0.1 it widens to what the data allow (ECE 0.038; see
        ``benchmarks/uncertainty.py``). Bayesian FFN layers start at 1e-3 (noise there is
        amplified through the encoder).
    kl_weight
        Weight of the KL term (1 = the evidence lower bound).
    layer_sizes
        ``[(n_heads, d_ff), ...]`` per block: set by :meth:`prune` so that a pruned model
        saves and loads with its smaller tensors.
    linear_path
        Add a linear path: logits = linear(standardised log expression of every gene) +
        head(pooled tokens). At :meth:`train` the linear part is fit first on the training split
        (a :class:`~cellformer.model.LinearClassifier`, trained as that baseline is, whose
        weights and scaler are copied) and frozen; the transformer head starts at
        zero, so training begins at the linear model and the transformer learns what it misses.
        The validation split early-stops it (keeping the linear model if no epoch beats it);
        then the linear part is refit on every labelled cell, as LinearClassifier uses them.
        On small data this keeps the model at least as good as logistic regression. The latent
        representation is the encoder's pooled output either way. ``False``: tokens → encoder →
        pooled → head only.
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
    #: Early stopping waits at least this many optimiser steps. With ~100 labelled cells an epoch
    #: is 2 steps and 8 epochs of patience stopped a fine-tuned encoder 6 steps in, with an
    #: untrained head (PBMC3k, 5 % labels, fold 0: macro-F1 0.03; with the floor 0.54).
    min_patience_steps = 60
    #: The starting predictions are the linear path's (the head starts at zero): when no epoch
    #: beats them, the zero head is restored and the encoder keeps what it learned.
    _initial_restore_keys = ("head.",)

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        tokenizer: str | dict = "default",
        d_model: int = 64,
        n_layers: int = 1,
        n_heads: int = 4,
        d_ff: int | None = None,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        pooling: str | None = None,
        attention: str = "dense",
        attention_options: dict | None = None,
        class_balance: bool = True,
        token_dropout: float = 0.15,
        head: str = "linear",
        bayesian_ffn: bool = False,
        prior_sigma: float = 1.0,
        init_sigma: float = 0.1,
        kl_weight: float = 1.0,
        layer_sizes: list[tuple[int, int]] | None = None,
        linear_path: bool = True,
        gene_embeddings: pd.DataFrame | None = None,
        freeze_gene_embeddings: bool = False,
        seed: int | None = 0,
        registry: dict | None = None,
        input_kind: str | None = None,
    ):
        super().__init__(adata, registry=registry, input_kind=input_kind)
        config = get_config(tokenizer)
        tokenizer = config.to_dict()
        if pooling is None:
            pooling = "mean" if config.drop_zeros else "genes"
        table = None
        if gene_embeddings is not None:
            if config.gene_encoder != "table":
                config = get_config(config, gene_encoder="table")
                tokenizer = config.to_dict()
            table = project_table(gene_embeddings, self.var_names, d_model)
        n_batches = 0
        if "batch" in config.context:
            if self._setup_args.get("batch_key") is None:
                raise pp.InputError(
                    "The tokenizer adds batch tokens (context=('batch',)) but no batch_key was "
                    "given: call setup_anndata(adata, ..., batch_key='batch')."
                )
            n_batches = len(self._batch_categories)
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_labels=self.n_classes,
                gene_names=self.var_names,
                tokenizer=config,
                input_kind=self.input_kind_,
                n_batches=n_batches,
                d_model=d_model,
                n_layers=n_layers,
                n_heads=n_heads,
                d_ff=d_ff or 2 * d_model,
                dropout=dropout,
                attention_dropout=attention_dropout,
                pooling=pooling,
                attention=attention,
                attention_options=attention_options,
                gene_table=table,
                freeze_gene_table=freeze_gene_embeddings,
                class_balance=class_balance,
                token_dropout=token_dropout,
                head=head,
                bayesian_ffn=bayesian_ffn,
                prior_sigma=prior_sigma,
                init_sigma=init_sigma,
                kl_weight=kl_weight,
                layer_sizes=layer_sizes,
                linear_path=linear_path,
            )
        input_kind = self.input_kind_
        self.init_params_ = self._get_init_params(locals())

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

    #: Most training cells the linear path is fit on (a random subsample beyond).
    linear_path_max_cells: int = 50_000
    #: Seed of the linear path's fit (set by :meth:`train`); the outer random stream is untouched.
    _linear_path_seed: int | None = 0
    #: Set inside :meth:`_linear_path_fixed_on`: ``train`` neither refits the linear path on
    #: its training split nor on every labelled cell at the end.
    _linear_path_fixed: bool = False

    @contextlib.contextmanager
    def _linear_path_fixed_on(self, train_idx: np.ndarray):
        """Fit the linear path on ``train_idx`` and keep it there; on exit, refit on all labels.

        :meth:`prune` judges its steps on validation cells the path must not have seen.
        """
        if self.module.linear is None:
            yield
            return
        self._fit_linear_path(np.sort(train_idx))
        self._linear_path_fixed = True
        try:
            yield
        finally:
            self._linear_path_fixed = False
            self._fit_linear_path(np.flatnonzero(self._train_labels() < self.n_classes))

    def _fit_training_statistics(self, train_idx: np.ndarray) -> None:
        if self.module.linear is not None and not self._linear_path_fixed:
            # training split only, so that the validation loss judges the transformer honestly
            # (train() refits it on every labelled cell at the end)
            self._fit_linear_path(train_idx)
        if self._keep_tokenizer_statistics:
            return
        self.module.fit_statistics(
            self._training_matrix(), self.input_kind_, train_idx, self._library(self.adata)
        )

    def _fit_linear_path(self, train_idx: np.ndarray) -> None:
        """Fit the linear path on training cells exactly as :class:`LinearClassifier` is fit; freeze it.

        The path is a :class:`~cellformer.model.LinearClassifier` (same objective, optimiser and
        number of steps) trained on these cells, so the transformer starts at the baseline.
        """
        from ._linear import LinearClassifier

        X = self._training_matrix()
        labels = self._train_labels()
        idx = np.asarray(train_idx)
        if len(idx) > self.linear_path_max_cells:
            rng = np.random.default_rng(0)
            idx = np.sort(rng.choice(idx, self.linear_path_max_cells, replace=False))
        classes = np.asarray(self.classes)
        key = "_cellformer_label"
        cells = ad.AnnData(
            X=X[idx],
            obs=pd.DataFrame({key: classes[labels[idx]]}, index=np.arange(len(idx)).astype(str)),
        )
        library = self._library(self.adata)
        library_key = None
        if library is not None:  # counts of a gene subset: keep the whole-transcriptome sizes
            library_key = pp.LIBRARY_KEY
            cells.obs[library_key] = library[idx]
        start = time.perf_counter()
        with quiet_training(), preserved_random_state():
            LinearClassifier.setup_anndata(cells, labels_key=key, library_size_key=library_key)
            baseline = LinearClassifier(cells)
            baseline.train(seed=self._linear_path_seed, enable_progress_bar=False, novelty=False)
        rows = pd.Index(classes).get_indexer(baseline.classes)
        weight = torch.zeros_like(self.module.linear.weight)
        bias = torch.full_like(self.module.linear.bias, -20.0)  # classes absent from training
        with torch.no_grad():
            weight[rows] = baseline.module.linear.weight.detach().to(weight)
            bias[rows] = baseline.module.linear.bias.detach().to(bias)
            self.module.linear.weight.copy_(weight)
            self.module.linear.bias.copy_(bias)
            self.module.linear_mean.copy_(baseline.module.mean)
            self.module.linear_scale.copy_(baseline.module.std)
        self.module.linear.requires_grad_(False)
        logger.info(
            "Linear path fit on %d training cells in %.1f s (frozen).",
            len(idx),
            time.perf_counter() - start,
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
        """Tokens the model sees for each cell (genes aligned to the model's by name).

        Genes of the model that ``adata`` lacks get no token.

        Returns
        -------
        Dict of arrays ``(cells, tokens)``: ``ids`` (see :attr:`tokenizer` ``.vocabulary``),
        ``values``, ``padding_mask`` and, for binned expression, ``bins``; plus ``tokens``, the
        token strings.
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
        early_stopping: bool = True,
        early_stopping_patience: int = 8,
        stage_b: dict | None = None,
        **kwargs,
    ):
        """Train; see :meth:`CellformerModel.train`.

        By default 10% of the labelled cells are held out; training stops when the validation loss
        has not improved for ``early_stopping_patience`` epochs and ends with the best epoch's
        weights.

        Parameters
        ----------
        stage_b
            Two-stage training in one call: after this (deterministic) stage A, make the head
            Bayesian (:meth:`to_bayesian`; ``"ffn": True`` for the FFNs too, ``"prior_sigma"``,
            ``"init_sigma"``),
            fine-tune it (``"max_epochs"``, default 10, and other :meth:`train` arguments, e.g.
            ``"plan_kwargs"``), then, with ``"prune": {...}``, prune (:meth:`prune`). The same as
            calling ``train()``, ``to_bayesian()``, ``train(...)`` and ``prune(...)`` in turn.
        """
        self._linear_path_seed = kwargs.get("seed", 0)
        mask_vector = getattr(self.module.embed.expression, "mask_vector", None)
        if mask_vector is not None:  # pretraining's <mask> value: no part in classifying
            mask_vector.requires_grad_(False)  # (and DDP wants a gradient for every trained one)
        result = super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            validation_size=validation_size,
            early_stopping=early_stopping and validation_size > 0,
            early_stopping_patience=early_stopping_patience,
            **kwargs,
        )
        if self.module.linear is not None and validation_size > 0 and not self._linear_path_fixed:
            # the validation cells have done their job (early stopping): the linear path now
            # uses every labelled cell, as LinearClassifier does
            self._fit_linear_path(np.flatnonzero(self._train_labels() < self.n_classes))
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
            **options,
        )
        if prune:
            self.prune(**{"validation_size": validation_size, **prune})
        return result

    @staticmethod
    def pretrain(adata: ad.AnnData, **kwargs) -> PretrainedEncoder:
        """Masked-expression pretraining on unlabelled cells; see :func:`cellformer.model.pretrain`.

        Examples
        --------
        >>> encoder = cf.model.CellTransformer.pretrain(unlabelled)
        >>> encoder.save("encoder/")
        >>> model = cf.model.CellTransformer.from_pretrained("encoder/", adata, "cell_type")
        >>> model.train()
        """
        return pretrain(adata, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        encoder: str | Path | PretrainedEncoder,
        adata: ad.AnnData,
        labels_key: str,
        layer: str | None = None,
        trainable_layers: int | None = None,
        layerwise_lr_decay: float | None = None,
        **kwargs,
    ) -> CellTransformer:
        """Build a classifier whose encoder starts from a pretrained one.

        ``adata`` is aligned to the encoder's genes (log-normalised; missing genes are zero,
        coverage is logged) and set up with ``labels_key``; the tokenizer keeps the pretrained
        statistics, so the encoder sees its inputs as in pretraining. The classification head is
        new.

        Parameters
        ----------
        encoder
            A :class:`PretrainedEncoder` or the directory it was saved to.
        adata
            Labelled cells (unlabelled ones may be marked as in ``setup_anndata``).
        labels_key
            Column of cell types.
        layer
            Layer of ``adata`` to read.
        trainable_layers
            Fine-tune only the last ``trainable_layers`` encoder blocks (and the head); the
            embeddings and earlier blocks stay frozen, as scBERT's fine-tuning does. ``None``:
            everything is trained; ``0``: the head only.
        layerwise_lr_decay
            Layer-wise learning rates: the head gets ``lr``, the last block ``lr * decay``, the
            one before ``lr * decay²``, ..., the embeddings the smallest.
        **kwargs
            Other :class:`CellTransformer` arguments (``head``, ``pooling``, ``token_dropout`` ...);
            the architecture is the encoder's.

        Returns
        -------
        The model, ready for :meth:`train`; ``model.adata`` is the aligned copy.
        """
        if not isinstance(encoder, PretrainedEncoder):
            encoder = PretrainedEncoder.load(encoder)
        clash = sorted(set(kwargs) & {*encoder.architecture, "tokenizer"})
        if clash:
            raise ValueError(f"{clash} are fixed by the pretrained encoder; leave them out.")
        aligned = encoder.align(adata, layer)
        cls.setup_anndata(aligned, labels_key=labels_key)
        model = cls(aligned, tokenizer=encoder.tokenizer, **encoder.architecture, **kwargs)
        weights = encoder.transferable(model.module)
        model.module.load_state_dict(weights, strict=False)
        model._keep_tokenizer_statistics = True
        n_layers = len(model.module.encoder.layers)
        if trainable_layers is not None:
            if not 0 <= trainable_layers <= n_layers:
                raise ValueError(
                    f"trainable_layers must be in [0, {n_layers}], got {trainable_layers}."
                )
            frozen = [
                model.module.embed,
                *model.module.encoder.layers[: n_layers - trainable_layers],
            ]
            for part in frozen:
                for parameter in part.parameters():
                    parameter.requires_grad_(False)
        if layerwise_lr_decay is not None:
            if not 0 < layerwise_lr_decay <= 1:
                raise ValueError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}.")
            model.module.lr_decay = layerwise_lr_decay
        logger.info("Loaded %d pretrained tensors (%s); the head is new.", len(weights), encoder)
        return model

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

        module = self.module
        if not isinstance(module.head[-1], BayesianLinear):
            module.head[-1] = BayesianLinear.from_linear(
                module.head[-1], prior_sigma=prior_sigma, init_sigma=init_sigma
            )
        if ffn:
            for block in module.encoder.layers:
                for i in (0, len(block.ff) - 1):
                    if not isinstance(block.ff[i], BayesianLinear):
                        block.ff[i] = BayesianLinear.from_linear(
                            block.ff[i], prior_sigma=prior_sigma
                        )
        params = self.init_params_["non_kwargs"]
        params.update(head="bayesian", prior_sigma=prior_sigma, init_sigma=init_sigma)
        params["bayesian_ffn"] = params.get("bayesian_ffn", False) or ffn
        return self

    @staticmethod
    def _default_max_epochs(n_train: int, batch_size: int) -> int:
        """About 1,500 optimisation steps, between 10 and 60 epochs."""
        return int(np.clip(epochs_for_steps(1500, n_train, batch_size), 10, 60))

    # -- structured pruning ----------------------------------------------------------------------
    def _validation_macro_f1(self, val_idx: np.ndarray) -> float:
        from sklearn.metrics import f1_score

        summary = self._validation_summary(val_idx)
        y = self._train_labels()[val_idx]
        return float(f1_score(y, summary["probs"].argmax(1), average="macro"))

    def _flops_per_cell(self, n_tokens: float) -> float:
        """Multiply-adds ×2 of the encoder's linear layers and attention for ``n_tokens``."""
        d = self.module.norm.normalized_shape[0]
        flops = 0.0
        for block in self.module.encoder.layers:
            inner = block.attn.n_heads * block.attn.head_dim
            d_ff = block.ff[0].out_features
            flops += 2 * n_tokens * (d * 3 * inner + inner * d + 2 * d * d_ff)
            flops += 4 * n_tokens * n_tokens * inner  # dense scores and weighted values
        return flops

    def prune(
        self,
        ffn_sparsity: float = 0.5,
        head_sparsity: float = 0.0,
        steps: int = 3,
        fine_tune_epochs: int = 3,
        tolerance: float = 0.01,
        score: str = "magnitude",
        validation_size: float = 0.1,
        seed: int = 0,
        lr: float | None = None,
    ) -> pd.DataFrame:
        """Remove FFN units and attention heads in steps, fine-tuning between steps.

        At step ``s`` of ``steps``, each block keeps its ``1 - ffn_sparsity * s / steps`` most
        important FFN units (and heads likewise, at least one), by ``score`` — ``"magnitude"`` of
        the unit's weights or first-order ``"taylor"`` ``|w · ∂L/∂w|`` over the training cells —
        then trains ``fine_tune_epochs``. Pruned units leave every tensor (see
        :func:`cellformer.nn.prune_ffn`), so the model gets smaller and faster and saves / loads
        at its new size. If the validation macro-F1 falls more than ``tolerance`` below the
        unpruned model's, the step is undone and pruning stops.

        Parameters
        ----------
        ffn_sparsity, head_sparsity
            Final share of FFN units / heads removed.
        steps
            Pruning steps.
        fine_tune_epochs
            Epochs of training after each step.
        tolerance
            Largest accepted drop of validation macro-F1.
        score
            ``"magnitude"`` or ``"taylor"``.
        validation_size, seed
            The validation split (the same as in :meth:`train` with these values).
        lr
            Learning rate of fine-tuning (default: a third of the training one).

        Returns
        -------
        The pruning report (also kept as :meth:`pruning_report`).
        """
        self._check_if_trained(warn=False)
        if not 0 <= ffn_sparsity < 1 or not 0 <= head_sparsity < 1:
            raise ValueError("ffn_sparsity and head_sparsity must be in [0, 1).")
        labels = self._train_labels()
        labelled = np.flatnonzero(labels < self.n_classes)
        train_idx, val_idx = self._split(labelled, labels[labelled], validation_size, seed)
        val_idx = np.sort(val_idx)
        if len(val_idx) == 0:
            raise ValueError("Pruning needs a validation split: validation_size > 0.")
        lr = lr if lr is not None else self._plan_defaults["lr"] / 3
        # after train() the linear path has seen the validation cells too: while steps are
        # judged on them it is fit on the training split only (and left there by train())
        with self._linear_path_fixed_on(train_idx):
            return self._prune_steps(
                train_idx, val_idx, ffn_sparsity, head_sparsity, steps, fine_tune_epochs,
                tolerance, score, validation_size, seed, lr,
            )  # fmt: skip

    def _prune_steps(
        self, train_idx, val_idx, ffn_sparsity, head_sparsity, steps, fine_tune_epochs,
        tolerance, score, validation_size, seed, lr,
    ) -> pd.DataFrame:  # fmt: skip
        """Run the pruning loop of :meth:`prune` (the linear path stays fit on ``train_idx``)."""
        from cellformer.nn import ffn_importance, head_importance, prune_ffn, prune_heads

        tokens = float((~self.tokenize(self.adata[val_idx])["padding_mask"]).sum(1).mean())
        original = self.module.layer_sizes
        base_f1 = self._validation_macro_f1(val_idx)
        rows = [self._pruning_row(0, base_f1, tokens)]
        for step in range(1, steps + 1):
            backup = copy.deepcopy(self.module)
            if score == "taylor":
                self._accumulate_gradients(np.sort(train_idx))
            for block, (heads, d_ff) in zip(self.module.encoder.layers, original, strict=True):
                keep_ff = max(1, round(d_ff * (1 - ffn_sparsity * step / steps)))
                keep_heads = max(1, round(heads * (1 - head_sparsity * step / steps)))
                if keep_ff < block.ff[0].out_features:
                    order = ffn_importance(block, score).argsort(descending=True)
                    prune_ffn(block, order[:keep_ff])
                if keep_heads < block.attn.n_heads:
                    order = head_importance(block.attn, score).argsort(descending=True)
                    prune_heads(block.attn, order[:keep_heads])
            self.module.zero_grad(set_to_none=True)
            self.train(
                max_epochs=fine_tune_epochs,
                validation_size=validation_size,
                early_stopping=False,
                seed=seed,
                plan_kwargs={"lr": lr, "warmup_fraction": 0.0},
                enable_progress_bar=False,
            )
            f1 = self._validation_macro_f1(val_idx)
            row = self._pruning_row(step, f1, tokens)
            if base_f1 - f1 > tolerance:
                row["kept"] = False
                rows.append(row)
                logger.info(
                    "Pruning step %d lowered validation macro-F1 %.3f → %.3f: undone.",
                    step,
                    base_f1,
                    f1,
                )
                self.module = backup
                break
            rows.append(row)
        self._set_layer_sizes(self.module.layer_sizes)
        self._pruning_report = pd.DataFrame(rows)
        return self._pruning_report

    def _pruning_row(self, step: int, f1: float, tokens: float) -> dict:
        sizes = self.module.layer_sizes
        return {
            "step": step,
            "heads": sum(h for h, _ in sizes),
            "ffn_units": sum(f for _, f in sizes),
            "n_params": int(sum(p.numel() for p in self.module.parameters())),
            "flops_per_cell": self._flops_per_cell(tokens),
            "validation_macro_f1": f1,
            "kept": True,
        }

    def _set_layer_sizes(self, sizes: list[tuple[int, int]]) -> None:
        """Record the block sizes in the init parameters, so that ``load`` builds them."""
        self.init_params_["non_kwargs"]["layer_sizes"] = [list(s) for s in sizes]

    def _accumulate_gradients(self, train_idx: np.ndarray, n_cells: int = 2048) -> None:
        """Gradients of the training loss on up to ``n_cells`` training cells (Taylor scores)."""
        import torch

        idx = np.sort(train_idx[:n_cells])
        X = self._training_matrix()
        labels = torch.as_tensor(self._train_labels())
        self.module.zero_grad(set_to_none=True)
        self.module.eval()
        device = next(self.module.parameters()).device
        library = self._library(self.adata)
        chunks = pp.iter_lognorm_chunks(
            X, self.input_kind_, indices=idx, chunk_size=256, library=library
        )
        for chunk, block in chunks:
            x = torch.as_tensor(block, device=device)
            extra = self._extra_inputs(self._expression_adata(self.adata), chunk, device)
            logits = self.module.inference(x, **extra)["logits"]
            y = labels[chunk].to(device)
            torch.nn.functional.cross_entropy(logits, y, reduction="sum").backward()

    def pruning_report(self) -> pd.DataFrame:
        """Per pruning step: heads, FFN units, parameters, FLOPs per cell, validation macro-F1."""
        report = getattr(self, "_pruning_report", None)
        if report is None:
            raise ValueError("This model has not been pruned: call model.prune(...) first.")
        return report
