"""Inference: validating a query, chunked forward passes, ``predict`` and the latent space."""

from __future__ import annotations

import logging
from typing import NamedTuple

import anndata as ad
import numpy as np
import pandas as pd
import torch

from cellformer import pp
from cellformer._errors import ParameterError
from cellformer._utils import check_positive, check_probability
from cellformer.nn import mc_sampling, predictive_summary

from ._outputs import check_indices, claim_keys, full_column, write_latent

__all__ = ["DEFAULT_PREFIX", "PREDICTION_COLUMNS", "UNKNOWN", "InferenceMixin"]

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
    "prediction_ontology_term_id",
    "prediction_coarse",
    "prediction_coarse_ontology_term_id",
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
            raise pp.InputError(f"Expected an AnnData or MuData, got {type(adata).__name__}.")
        if layer is None:
            setup_layer = self._layer
            if setup_layer is not None and setup_layer in adata.layers:
                layer = setup_layer
            elif setup_layer is not None:
                logger.info("Layer %r not in this AnnData; reading adata.X.", setup_layer)
        pp.check_var_names(adata)
        check_probability(closed=True, required=True, min_gene_coverage=min_gene_coverage)
        kind = pp.check_expression(adata, layer, allow_empty_cells=True)
        if kind != self.input_kind_:
            logger.debug("The model was trained on %s, this data holds %s.", self.input_kind_, kind)
        alignment = pp.align_genes(
            self.var_names,
            adata.var_names,
            min_coverage=min_gene_coverage,
            query_cells=adata.obs_names,
            query_var=adata.var,
        )
        X = pp.get_matrix(adata, layer)
        library = self._library(adata, library_size_key) if kind == "counts" else None
        return Resolved(adata, X, kind, alignment, library)

    #: Whether the latent space is meaningful before training (a pretrained encoder's).
    _latent_is_pretrained: bool = False

    @torch.inference_mode()
    def _forward_chunks(
        self,
        adata,
        layer,
        batch_size: int,
        fn,
        check_trained: bool = True,
        indices=None,
        **options,
    ) -> tuple[ad.AnnData, np.ndarray]:
        """Apply ``fn(x, extra)`` to log-normalised chunks of the aligned data.

        ``options``: ``min_gene_coverage`` and ``library_size_key`` of :meth:`_resolve`;
        ``check_trained``: warn when the model is not trained yet; ``indices``: only these cells
        (rows of the output, in this order).
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
        try:
            for idx, block in pp.iter_lognorm_chunks(
                data.X,
                data.kind,
                indices,
                alignment=data.alignment,
                chunk_size=batch_size,
                library=data.library,
                dtype=dtype,
            ):
                out = self._apply_in_passes(
                    fn, torch.as_tensor(block, device=device), self._chunk_inputs(data, idx, device)
                )
                out = out.cpu().numpy()
                if result is None:
                    # one array for every cell, allocated once: small per-chunk results kept
                    # between large per-chunk temporaries fragment the heap (on a million cells
                    # the process grew by the size of the whole dense query)
                    result = np.empty((n_rows, *out.shape[1:]), dtype=out.dtype)
                result[row : row + len(out)] = out
                row += len(out)
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

    def _predict_summary(
        self,
        adata,
        layer,
        batch_size,
        mc_samples,
        mc_dropout,
        indices=None,
        with_latent=False,
        **options,
    ):
        """Mean probabilities, their std, entropy, mutual information and confidence per cell.

        Also ``empty``: cells without any measured expression on the model's genes; with
        ``with_latent``, ``latent``: the latent representation, from the same pass over the
        data. With ``indices``, for those cells only.
        """
        check_positive(mc_samples=mc_samples)
        n = 1 if mc_samples is None else int(mc_samples)
        sampled = mc_samples is not None or mc_dropout
        n_classes = self.n_classes
        one_vs_rest = getattr(self.module, "one_vs_rest", False)

        def fn(x, extra):
            inference = None
            if not sampled:
                inference = self.module.inference(x, **extra)
                logits = inference["logits"][None]
            else:
                with mc_sampling(self.module, dropout=mc_dropout):
                    logits = torch.stack(
                        [self.module.inference(x, **extra)["logits"] for _ in range(n)]
                    )
            # one-vs-rest probabilities saturate at 1: such modules compute in float64, and
            # the label is the top score (as CellTypist), not the top of tied probabilities
            logits = (logits if one_vs_rest else logits.float()) / self.module.temperature
            s = predictive_summary(logits, one_vs_rest=one_vs_rest)
            top = (logits.mean(0) if one_vs_rest else s["probs"]).argmax(-1)
            novelty = self.module.novelty(x)
            empty = torch.nan_to_num(x, nan=0.0).abs().sum(dim=1) == 0
            columns = [s["entropy"], s["mutual_info"], novelty, empty, top]
            columns = torch.stack([c.to(s["probs"].dtype) for c in columns], dim=1)
            parts = [s["probs"], s["std"], columns]
            if with_latent:
                z = self._latent_from_inference(x, extra, inference)
                parts.append(z.to(s["probs"].dtype))
            return torch.cat(parts, dim=1)

        adata, out = self._forward_chunks(adata, layer, batch_size, fn, indices=indices, **options)
        probs = out[:, :n_classes]
        return adata, {
            "probs": probs,
            "std": out[:, n_classes : 2 * n_classes],
            "entropy": out[:, 2 * n_classes],
            "mutual_info": out[:, 2 * n_classes + 1],
            "novelty": out[:, 2 * n_classes + 2],
            "empty": out[:, 2 * n_classes + 3] > 0.5,
            "top": out[:, 2 * n_classes + 4].astype(np.int64),
            "confidence": probs.max(axis=1),
            "sampled": sampled,
            "latent": out[:, 2 * n_classes + 5 :].astype(np.float32) if with_latent else None,
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
        return_std: bool = False,
        indices: np.ndarray | list[int] | None = None,
        ontology: bool = False,
        ontology_mass: float = 0.9,
        ontology_threshold: float | None = None,
        latent: bool = False,
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

        Returns
        -------
        Predicted labels (array of str, one per cell) or, with ``soft=True``, a DataFrame of
        (mean) probabilities (cells × cell types) indexed by ``obs_names``; with
        ``return_std=True`` the pair ``(mean, std)`` of such DataFrames.
        """
        if return_std and not soft:
            raise ParameterError("return_std=True goes with soft=True (probabilities).")
        check_positive(mc_samples=mc_samples)
        check_probability(closed=True, ontology_threshold=ontology_threshold)
        if not (isinstance(ontology_mass, (int, float)) and 0 < ontology_mass <= 1):  # NaN fails
            raise ParameterError(f"ontology_mass must be in (0, 1], got {ontology_mass!r}.")
        if mc_samples is None and mc_dropout:
            mc_samples = 30
        if mc_samples is None:
            mc_samples = self.mc_samples_default
        if reject_unknown and not np.isfinite(float(self.module.unknown_threshold)):
            raise ParameterError(
                "No Unknown threshold: train with a validation split (validation_size > 0)."
            )
        options = {"min_gene_coverage": min_gene_coverage, "library_size_key": library_size_key}
        pp.check_key_prefix(key_prefix)
        adata, summary = self._predict_summary(
            adata,
            layer,
            batch_size,
            mc_samples,
            mc_dropout,
            indices=indices,
            with_latent=latent,
            **options,
        )
        rows = check_indices(indices, adata.n_obs)
        obs_names = adata.obs_names if rows is None else adata.obs_names[rows]
        probs, confidence = summary["probs"], summary["confidence"].astype(np.float32)
        classes = np.asarray(self.classes, dtype=object)
        labels = classes[summary["top"]]
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
                z = summary["latent"]
                if z is None:
                    z = self.get_latent_representation(
                        adata, layer, batch_size, key_prefix=None, indices=indices, **options
                    )
                clusters = over_cluster(z)
            elif isinstance(over_clustering, str):
                if over_clustering not in adata.obs:
                    raise pp.InputError(
                        f"over_clustering={over_clustering!r} is not a column of obs."
                    )
                clusters = adata.obs[over_clustering].astype(str).to_numpy()
                clusters = clusters if rows is None else clusters[rows]
            else:
                clusters = np.asarray(over_clustering).astype(str)
                if len(clusters) != len(labels):
                    raise pp.InputError(
                        f"over_clustering has {len(clusters)} values for {len(labels)} cells."
                    )
            voting = (clusters, majority_vote(labels, clusters))
        coarse = None
        if ontology:
            coarse = self._coarse(probs, confidence, ontology_threshold, ontology_mass)
        if key_prefix is not None:
            obs = adata.obs
            keys = [f"{key_prefix}_{c}" for c in PREDICTION_COLUMNS]
            if latent:  # refuse a user's obsm key before anything is written
                claim_keys(adata, "obsm", [f"X_{key_prefix}"])
            claim_keys(adata, "obs", keys)
            obs.drop(columns=[k for k in keys if k in obs], inplace=True)  # cellformer's own
            has_unknown = reject_unknown or empty.any()
            categories = [*self.classes, UNKNOWN] if has_unknown else self.classes

            def write(column, values, categories=None):
                obs[f"{key_prefix}_{column}"] = full_column(values, rows, adata.n_obs, categories)

            write("prediction", labels, categories)
            write("confidence", confidence)
            write("entropy", summary["entropy"].astype(np.float32))
            if summary["sampled"]:
                write("mutual_info", summary["mutual_info"].astype(np.float32))
            if self.module.novelty.is_fitted:
                write("novelty", summary["novelty"].astype(np.float32))
            if unknown is not None:
                write("unknown", unknown)
            if voting is not None:
                write("over_clustering", voting[0], sorted(set(voting[0])))
                write("majority_voting", voting[1], categories)
            if self.label_ontology_ is not None or ontology:
                terms = (self.label_ontology_ or {}).get("terms", {})
                fine = np.array([terms.get(str(c)) for c in labels], dtype=object)
                write("prediction_ontology_term_id", fine, sorted({t for t in fine if t}))
            if coarse is not None:
                write("prediction_coarse", coarse[0], sorted(set(coarse[0])))
                term_ids = sorted({t for t in coarse[1] if t})
                write("prediction_coarse_ontology_term_id", coarse[1], term_ids)
            if latent:
                write_latent(adata, summary["latent"], key_prefix, rows)
        if soft:
            frame = pd.DataFrame(probs, index=obs_names.copy(), columns=self.classes)
            if return_std:
                std = pd.DataFrame(summary["std"], index=frame.index, columns=self.classes)
                return frame, std
            return frame
        return labels

    def get_latent_representation(
        self,
        adata: ad.AnnData | None = None,
        layer: str | None = None,
        batch_size: int = 1024,
        key_prefix: str | None = DEFAULT_PREFIX,
        min_gene_coverage: float = 0.5,
        library_size_key: str | None = None,
        indices: np.ndarray | list[int] | None = None,
    ) -> np.ndarray:
        """Cell embeddings, written to ``obsm[f"X_{key_prefix}"]`` unless ``key_prefix`` is None.

        Use it as ``sc.pp.neighbors(adata, use_rep="X_cellformer")``. ``min_gene_coverage``,
        ``library_size_key`` and ``indices`` (only these cells; other rows of ``obsm`` NaN): see
        :meth:`predict`.
        """
        pp.check_key_prefix(key_prefix)
        adata, z = self._forward_chunks(
            adata,
            layer,
            batch_size,
            self._latent,
            check_trained=not self._latent_is_pretrained,
            indices=indices,
            min_gene_coverage=min_gene_coverage,
            library_size_key=library_size_key,
        )
        if key_prefix is not None:
            write_latent(adata, z, key_prefix, check_indices(indices, adata.n_obs))
        return z
