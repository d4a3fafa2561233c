"""Inference: validating a query, chunked forward passes, ``predict`` and the latent space."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import _core, pp
from cellformer._core.progress import progress_bar
from cellformer._errors import ParameterError
from cellformer._utils import check_positive, check_probability
from cellformer.pp import CellOntology

from . import _ontology, _predict
from ._outputs import check_indices, write_latent
from ._predict import PREDICTION_COLUMNS, UNKNOWN

__all__ = ["DEFAULT_PREFIX", "PREDICTION_COLUMNS", "UNKNOWN", "InferenceMixin"]

logger = logging.getLogger("cellformer")

DEFAULT_PREFIX = "cellformer"


class Resolved(NamedTuple):
    """A query validated for inference (see ``CellformerModel._resolve``)."""

    adata: ad.AnnData
    X: object
    kind: str
    alignment: _core.GeneAlignment
    library: np.ndarray | None


class InferenceMixin:
    """Predictions, embeddings and the query checks they share."""

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
                raise ParameterError("Pass adata=...: this model was loaded without data.")
        adata = self._expression_adata(adata)
        if not isinstance(adata, ad.AnnData):
            raise _core.InputError(f"Expected an AnnData or MuData, got {type(adata).__name__}.")
        if layer is None:
            setup_layer = self._layer
            if setup_layer is not None and setup_layer in adata.layers:
                layer = setup_layer
            elif setup_layer is not None:
                logger.info("Layer %r not in this AnnData; reading adata.X.", setup_layer)
        _core.check_var_names(adata)
        check_probability(closed=True, required=True, min_gene_coverage=min_gene_coverage)
        kind = pp.check_expression(adata, layer, allow_empty_cells=True)
        if kind != self.input_kind_:
            logger.debug("The model was trained on %s, this data holds %s.", self.input_kind_, kind)
        alignment = _core.align_genes(
            self.var_names,
            adata.var_names,
            min_coverage=min_gene_coverage,
            query_cells=adata.obs_names,
            query_var=adata.var,
        )
        X = _core.get_matrix(adata, layer)
        library = self._library(adata, library_size_key) if kind == "counts" else None
        return Resolved(adata, X, kind, alignment, library)

    #: Whether the latent space is meaningful before training (a pretrained encoder's).
    _latent_is_pretrained: bool = False
    #: ``{"version": "CL v…", "terms": {class: CL ID}}`` once set (saved with the model).
    label_ontology_: dict | None = None

    @property
    def mc_samples_default(self) -> int | None:
        """Monte-Carlo samples used by default: 30 for models with Bayesian layers, else none."""
        return 30 if self.module.bayesian_layers else None

    def set_label_ontology(
        self,
        label_ontology: Mapping[str, str] | None = None,
        ontology: CellOntology | None = None,
    ) -> dict[str, str]:
        """Map the model's classes to Cell Ontology terms and keep the mapping.

        Classes that are CL IDs, or exactly a CL label or synonym, map by themselves;
        ``label_ontology={label: "CL:…"}`` names the others. Unmatched classes are listed in one
        message (they get no term: no coarse answer involves them). Predictions then also write
        ``obs[f"{key_prefix}_prediction_ontology_term_id"]``.

        Returns ``{class: term}``.
        """
        return _ontology.set_label_ontology(self, label_ontology, ontology)

    @torch.inference_mode()
    def _forward_chunks(
        self,
        adata,
        layer,
        batch_size: int,
        fn,
        check_trained: bool = True,
        indices=None,
        progress: str | None = None,
        **options,
    ) -> tuple[ad.AnnData, np.ndarray]:
        """Apply ``fn(x, extra)`` to log-normalised chunks of the aligned data.

        ``options``: ``min_gene_coverage`` and ``library_size_key`` of :meth:`_resolve`;
        ``check_trained``: warn when the model is not trained yet; ``indices``: only these cells
        (rows of the output, in this order); ``progress``: a progress bar's description (one
        step a chunk; ``None``: no bar).
        """
        check_positive(batch_size=batch_size)
        if check_trained:
            self._check_if_trained(warn=True)
        data = self._resolve(adata, layer, **options)
        indices = check_indices(indices, data.adata.n_obs)
        first = next(self.module.parameters())
        device = first.device
        # float64 modules (CellTypist's one-vs-rest scores) read float64 expression
        dtype = np.float64 if first.dtype == torch.float64 else np.float32
        batch_size = self._inference_batch_size(batch_size)
        was_training = self.module.training
        self.module.eval()
        n_rows = data.adata.n_obs if indices is None else len(indices)
        result = None
        row = 0
        chunks = _core.iter_lognorm_chunks(
            data.X,
            data.kind,
            indices,
            alignment=data.alignment,
            chunk_size=batch_size,
            library=data.library,
            dtype=dtype,
        )
        bar = progress_bar(progress or "", -(-n_rows // batch_size), enabled=progress is not None)
        try:
            with bar as advance:
                for idx, block in chunks:
                    extra = self._chunk_inputs(data, idx, device)
                    out = self._apply_in_passes(fn, torch.as_tensor(block, device=device), extra)
                    out = out.cpu().numpy()
                    if result is None:
                        # one array for every cell, allocated once: small per-chunk results
                        # kept between large per-chunk temporaries fragment the heap (on a
                        # million cells the process grew by the size of the whole dense query)
                        result = np.empty((n_rows, *out.shape[1:]), dtype=out.dtype)
                    result[row : row + len(out)] = out
                    row += len(out)
                    advance()
        finally:
            self.module.train(was_training)  # a later train() must not run with dropout off
        return data.adata, result

    def _apply_in_passes(self, fn, x: torch.Tensor, extra: dict) -> torch.Tensor:
        """``fn(x, extra)`` on a chunk (models with variable-length inputs split it)."""
        return fn(x, extra)

    def _inference_batch_size(self, batch_size: int) -> int:
        """Cells per forward pass at inference (models with long inputs may lower it)."""
        return batch_size

    def _chunk_inputs(self, data: Resolved, idx: np.ndarray, device) -> dict:
        """Return inputs besides log-normalised expression for the cells ``idx`` of a query."""
        return self._extra_inputs(data.adata, idx, device)

    def _extra_inputs(self, adata: ad.AnnData, idx: np.ndarray, device) -> dict:
        """Return inputs besides expression for the cells ``idx`` (e.g. batch codes)."""
        return {}

    def _latent(self, x: torch.Tensor, extra: dict) -> torch.Tensor:
        return self.module.inference(x, **extra)["z"]

    def _latent_from_inference(self, x: torch.Tensor, extra: dict, inference: dict | None):
        """Return the latent of ``x``, from ``module.inference``'s outputs when given."""
        if inference is not None and type(self)._latent is InferenceMixin._latent:
            return inference["z"]
        return self._latent(x, extra)

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
        return_std: bool = False,
        indices: np.ndarray | list[int] | None = None,
        ontology: bool = False,
        ontology_mass: float = 0.9,
        ontology_threshold: float | None = None,
        latent: bool = False,
        progress: bool = True,
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
            clusters in ``_over_clustering`` and the vote's confidence in
            ``_majority_voting_confidence``: the share of the cluster's cells whose own label is
            the voted one (1: unanimous). Returned labels stay per cell.
        over_clustering
            With ``majority_voting``: an ``obs`` column (or an array) with the query's own
            clusters to vote in, instead of computing them.
        return_std
            With ``soft=True``: also return the standard deviation of each probability over the
            Monte-Carlo samples (zeros for a single deterministic pass).
        indices
            Predict only these cells of ``adata`` (positions, as in scvi-tools); results are
            returned in this order, and written to their rows of ``obs`` (other rows missing).
        ontology
            Also give unsure cells a coarser, correct answer from the Cell Ontology
            (``pip install "cellformer[ontology]"``): ``obs[f"{key_prefix}_prediction_coarse"]``
            and its ``_ontology_term_id``. A cell whose confidence is below
            ``ontology_threshold`` gets the most specific common ancestor of the fewest classes
            holding ``ontology_mass`` of its probability; sure cells keep their class. The
            classes' terms come from :meth:`set_label_ontology` (run with no mapping on first
            use: classes that are CL IDs, labels or synonyms).
        ontology_mass
            Probability the coarse answer's classes must hold (default 0.9).
        ontology_threshold
            Confidence below which a cell gets a coarse answer; default the model's "Unknown"
            confidence threshold when fit in training, else 0.5.
        latent
            Also compute the latent representation in the same pass over the data and write it
            to ``obsm[f"X_{key_prefix}"]`` (as :meth:`get_latent_representation` does);
            majority voting then over-clusters it. One pass instead of two on large queries.
        progress
            Show a progress bar over the chunks of ``batch_size`` cells (on queries of more than
            one chunk, while ``cf.settings.verbosity`` shows info).

        Returns
        -------
        Predicted labels (array of str, one per cell) or, with ``soft=True``, a DataFrame of
        (mean) probabilities (cells × cell types) indexed by ``obs_names``; with
        ``return_std=True`` the pair ``(mean, std)`` of such DataFrames.
        """
        mc_samples = _predict.check_options(
            self,
            soft,
            return_std,
            mc_samples,
            mc_dropout,
            reject_unknown,
            ontology_threshold,
            ontology_mass,
            key_prefix,
        )
        options = {"min_gene_coverage": min_gene_coverage, "library_size_key": library_size_key}
        p = _predict.predictive_passes(
            self,
            adata,
            layer,
            batch_size,
            mc_samples,
            mc_dropout,
            indices=indices,
            with_latent=latent,
            progress="predicting" if progress else None,
            **options,
        )
        _predict.reject(self, p, reject_unknown)
        _predict.label_empty_cells(p)
        if majority_voting:

            def latent_of():
                return self.get_latent_representation(
                    p.adata, layer, batch_size, None, indices=indices, progress=progress, **options
                )

            _predict.vote(self, p, over_clustering, latent_of)
        if ontology:
            p.coarse = _ontology.coarse_answers_of(self, p.probs, ontology_threshold, ontology_mass)
        if key_prefix is not None:
            _predict.write(self, p, key_prefix, ontology)
        return _predict.returned(self, p, soft, return_std)

    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        layer: str | None = None,
        batch_size: int = 1024,
        key_prefix: str | None = DEFAULT_PREFIX,
        min_gene_coverage: float = 0.5,
        library_size_key: str | None = None,
        indices: np.ndarray | list[int] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Cell embeddings, written to ``obsm[f"X_{key_prefix}"]`` unless ``key_prefix`` is None.

        Use it as ``sc.pp.neighbors(adata, use_rep="X_cellformer")``. ``min_gene_coverage``,
        ``library_size_key``, ``indices`` (only these cells; other rows of ``obsm`` NaN) and
        ``progress``: see :meth:`predict`.
        """
        _core.check_key_prefix(key_prefix)
        adata, z = self._forward_chunks(
            adata,
            layer,
            batch_size,
            self._latent,
            check_trained=not self._latent_is_pretrained,
            indices=indices,
            progress="latent representation" if progress else None,
            min_gene_coverage=min_gene_coverage,
            library_size_key=library_size_key,
        )
        if key_prefix is not None:
            write_latent(adata, z, key_prefix, check_indices(indices, adata.n_obs))
        return z
