"""``cf.tl.annotate``: reference → query annotation across gene panels, in one call."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np

from cellformer import _core, pp
from cellformer._core import mismatch_hints
from cellformer._utils import check_probability

from ._train import MODEL_KINDS, auto_choice, model_class_of, train_on_reference
from ._trained import load_trained

__all__ = ["annotate", "prepare_reference"]

logger = logging.getLogger("cellformer")

GeneChoice = Literal["auto", "shared", "all"]


def is_saved_model(model) -> bool:
    """Whether ``model`` names a trained model rather than a model kind to train.

    A trained model: a directory, a CellTypist ``.pkl``, ``hf:ORG/NAME``.
    """
    from cellformer._utils import is_celltypist_file
    from cellformer.model.base import HF_PREFIX

    if isinstance(model, str) and "/" not in model:
        base, _, _ = model.partition(":")
        if base in MODEL_KINDS:  # a kind to train, even where a folder has that name
            if Path(model).is_dir():
                logger.warning(
                    "model=%r is a model kind to train; the folder %r in the working directory "
                    "is not read (pass './%s' to use a model saved there).",
                    model,
                    model,
                    model,
                )
            return False
    return isinstance(model, Path) or (
        isinstance(model, str)
        and (
            "/" in model
            or Path(model).is_dir()
            or is_celltypist_file(model)
            or model.startswith(HF_PREFIX)
        )
    )


def prepare_reference(
    reference: ad.AnnData,
    query: ad.AnnData,
    labels_key: str,
    layer: str | None = None,
    genes: GeneChoice = "auto",
    library_size_key: str | None = None,
    min_gene_coverage: float = 0.5,
) -> tuple[ad.AnnData, str | None, pp.GeneOverlap]:
    """Check a reference against a query and put it on the genes to train on.

    Everything that can be checked before training is: labels, expression values of both, the gene
    overlap. Returns ``(reference to train on, its library_size_key, overlap)``.
    """
    pp.validate_anndata(reference, layer, labels_key)
    overlap = pp.gene_overlap(reference, query)
    if overlap.n_shared == 0:
        hints = mismatch_hints(
            reference.var_names,
            query.var_names,
            query.obs_names,
            what="reference",
            id_kinds=False,
            query_var=query.var,
        )
        raise _core.InputError(
            f"The reference and the query share no gene. {overlap.summary()}{hints}"
        )
    logger.info("Genes: %s", overlap.summary())
    if genes not in ("auto", "shared", "all"):
        raise _core.InputError(f"genes={genes!r}: use 'auto', 'shared' or 'all'.")
    if genes == "auto":
        genes = "shared" if overlap.reference_coverage < min_gene_coverage else "all"
        if genes == "shared":
            logger.warning(
                "The query has %.1f%% of the reference's %d genes (below %.0f%%): training on "
                "the %d shared genes.",
                100 * overlap.reference_coverage,
                overlap.n_reference,
                100 * min_gene_coverage,
                overlap.n_shared,
            )
    if library_size_key is not None:
        _core.check_library_sizes(reference, library_size_key)
    if genes == "all" or overlap.n_shared == overlap.n_reference:
        if overlap.reference_coverage < min_gene_coverage:
            raise _core.InputError(
                f"genes='all' but the query has only {overlap.reference_coverage:.1%} of the "
                f"reference's genes (need {min_gene_coverage:.0%}). Use genes='shared' to train on "
                "the shared genes."
            )
        return _detached(reference), library_size_key, overlap
    sub = pp.subset_genes(reference, overlap.shared, layer, library_size_key)
    sub = _drop_cells_empty_on_shared_genes(sub, layer, overlap)
    key = _core.LIBRARY_KEY if _core.LIBRARY_KEY in sub.obs else None
    if key is not None and library_size_key is None:
        hints = [c for c in ("nCount_RNA", "total_counts", "n_counts") if c in reference.obs]
        if hints:
            logger.info(
                "Reference library sizes are its sums over its %d genes; if it was already "
                "subset to fewer genes, pass library_size_key=%r (whole-transcriptome sizes).",
                overlap.n_reference,
                hints[0],
            )
    return sub, key, overlap


def _detached(adata: ad.AnnData) -> ad.AnnData:
    """Return an AnnData that shares ``adata``'s matrices, with its own ``obs``, ``var``, ``uns``.

    ``setup_anndata`` writes its columns and keys into what it registers: the user's reference
    must not gain them. A backed reference is returned as it is (its matrix is on disk).
    """
    if adata.isbacked:
        return adata
    return ad.AnnData(
        X=adata.X,
        obs=adata.obs.copy(),
        var=adata.var.copy(),
        layers=dict(adata.layers),
        obsm=dict(adata.obsm),
    )


#: Above this share of reference cells without expression on the shared genes, the shared panel
#: is too small to train on.
MAX_EMPTY_REFERENCE_SHARE = 0.2


def _drop_cells_empty_on_shared_genes(sub: ad.AnnData, layer, overlap) -> ad.AnnData:
    """Leave out reference cells that express none of the shared genes.

    They cannot be trained on; when they are many, the query's panel is too small for this
    reference: an error.
    """
    import numpy as np

    X = _core.get_matrix(sub, layer)
    empty = np.asarray(abs(X).sum(axis=1)).ravel() == 0
    if not empty.any():
        return sub
    if empty.mean() > MAX_EMPTY_REFERENCE_SHARE:
        raise _core.InputError(
            f"On the {overlap.n_shared} genes the query shares with the reference, "
            f"{int(empty.sum())} of {sub.n_obs} reference cells ({empty.mean():.0%}) express "
            "none: too few shared genes to train a model that can annotate this query "
            f"({overlap.summary()}). Use a query with more of the reference's genes, or map gene "
            "names so that more of them match."
        )
    logger.warning(
        "%d reference cells express none of the %d shared genes; they are left out of training.",
        int(empty.sum()),
        overlap.n_shared,
    )
    return sub[~empty].copy()


def annotate(
    query: ad.AnnData,
    reference: ad.AnnData | None = None,
    labels_key: str | None = None,
    model: str | Path | object = "linear",
    genes: GeneChoice = "auto",
    layer: str | None = None,
    query_layer: str | None = None,
    library_size_key: str | None = None,
    query_library_size_key: str | None = None,
    max_epochs: int | None = None,
    majority_voting: bool = False,
    reject_unknown: bool = False,
    min_gene_coverage: float = 0.5,
    key_prefix: str = "cellformer",
    seed: int | None = 0,
    save_model: str | Path | None = None,
    progress: bool = True,
    copy: bool = False,
    adapt: bool = False,
    overwrite: bool = False,
    ontology: bool = False,
    label_ontology: dict[str, str] | None = None,
    over_clustering: str | np.ndarray | None = None,
    trust: bool = False,
) -> ad.AnnData:
    """Annotate a query with a labelled reference (or a saved model), in one call.

    Checks both data sets and their gene overlap before anything trains, trains a model on the
    reference (on the genes shared with the query when the query lacks many of the reference's,
    keeping each reference cell's whole-transcriptome library size), and writes predictions,
    confidence, novelty (and optionally majority votes and "Unknown" labels) to ``query.obs``
    and the model's embedding to ``query.obsm[f"X_{key_prefix}"]``.

    Parameters
    ----------
    query
        Cells to annotate (counts or log-normalised values).
    reference
        Labelled reference (not needed when ``model`` is a saved model).
    labels_key
        ``obs`` column of the reference with curated cell types.
    model
        ``"linear"`` (class-balanced logistic regression), ``"transformer"``,
        ``"transformer:PRESET"``, ``"auto"`` (the transformer is trained and its guard
        decides on held-out reference cells whether its head beats its linear path; when it
        does not, a :class:`~cellformer.model.LinearClassifier` — the same predictions, faster —
        annotates; ``query.uns["cellformer"]["auto"]`` reports the choice and both scores), a
        saved model's directory, a CellTypist model file
        (``.pkl``, see :meth:`~cellformer.model.LinearClassifier.from_celltypist`), a model on
        the Hugging Face Hub (``"hf:ORG/NAME"``: a saved cellformer model or a CellTypist
        ``.pkl``, downloaded once into Hugging Face's cache), or a trained model. A published
        CellTypist model's bare name (``"Immune_All_Low.pkl"``) that is not a local file is
        downloaded once into :func:`cellformer.datasets.data_dir` (hash-checked).
    genes
        ``"shared"``: train on the genes the query has; ``"all"``: on all reference genes
        (the query's missing genes are unmeasured); ``"auto"``: shared when the query has fewer
        than ``min_gene_coverage`` of the reference's genes.
    layer, query_layer
        Layers with the expression values (``None``: ``X``; the query falls back to ``layer``'s
        name when it has it).
    library_size_key
        ``obs`` column with whole-transcriptome library sizes (e.g. ``nCount_RNA``) of the
        reference and, when it has it, of the query: needed when counts cover a gene subset.
    query_library_size_key
        The query's column of whole-transcriptome library sizes, when its counts cover a gene
        subset and the column has another name (default: ``library_size_key`` if the query has
        it, else each query cell's sum over its genes).
    max_epochs
        Training epochs (default: the model's size-based default).
    majority_voting
        Over-cluster the query on the model's latent space and write the majority label of each
        cluster (``obs[f"{key_prefix}_majority_voting"]``), with the vote's confidence
        (``_majority_voting_confidence``: the share of the cluster's cells that agree with it).
    reject_unknown
        Label cells "Unknown" by the thresholds fit on a validation split.
    min_gene_coverage
        Least share of the model's genes the query must have.
    key_prefix
        Prefix of the ``obs`` / ``obsm`` keys.
    seed
        Random seed of the training run.
    save_model
        Directory to save the trained model to (reuse it with ``model=DIR``).
    progress
        Show progress bars (training, and the passes over a query of more than one chunk).
    copy
        Annotate a copy of ``query`` instead of ``query`` itself.
    adapt
        Let the transformer learn from the query (``model="transformer[:PRESET]"`` with a
        reference): on the genes the two share, class-balanced logistic regression labels the
        query by self-training (two rounds; the most confident half of each predicted class
        becomes training labels), and the transformer trains on the reference and those query
        cells together (its linear path is the adapted regression). The query's own labels, if
        any, are never read. The saved model records the query it saw (``adapted_to_``: cells,
        genes, a fingerprint of their names).

    overwrite
        Replace a model already saved at ``save_model`` (else that is an error, raised before
        training).
    ontology
        Also write coarser, correct Cell Ontology answers for unsure cells and the term IDs
        (see :meth:`~cellformer.model.CellformerModel.predict`'s ``ontology``).
    label_ontology
        ``{label: "CL:…"}`` for the model's labels that are not CL IDs, labels or synonyms
        (kept with a saved model).
    over_clustering
        With ``majority_voting``: the query's own clusters to vote in (an ``obs`` column name
        or an array, e.g. a Leiden clustering computed beforehand) instead of over-clustering
        the model's latent space here. On atlas-size queries this skips the kNN graph.
    trust
        Also read model files that are Python pickles, which can run code when read: an older
        saved model (``model.pt``) that holds more than arrays, and any pickle from the Hub
        (``hf:``). Saved models of cellformer 0.1.0 on (``model.json`` +
        ``model.safetensors``) and local CellTypist files (read by a restricted unpickler) need
        no trust. Pass it only for files whose source you trust.

    Returns
    -------
    The annotated query (``query`` itself unless ``copy``); ``uns["cellformer"]`` records the
    model and the genes used. A query opened with ``anndata.read_h5ad(path, backed="r")`` is
    annotated chunk by chunk without loading its matrix (results go to its in-memory ``obs``
    and ``obsm``; write them with ``cellformer annotate`` or anndata's element writers).

    Examples
    --------
    >>> import cellformer as cf
    >>> cf.tl.annotate(query, reference=ref, labels_key="cell_type")  # doctest: +SKIP
    >>> sc.pl.umap(
    ...     query, color=["cellformer_prediction", "cellformer_confidence"]
    ... )  # doctest: +SKIP
    """
    from cellformer.model import CellformerModel

    query, query_layer, query_key = _checked_query(
        query,
        reference,
        layer,
        query_layer,
        library_size_key,
        query_library_size_key,
        min_gene_coverage,
        copy,
    )
    _core.check_key_prefix(key_prefix)
    _check_save_model(save_model, overwrite)
    info: dict = {}
    trained_already = isinstance(model, CellformerModel) or is_saved_model(model)
    if adapt:
        _check_adapt(model, trained_already, reference, labels_key, genes)
    if isinstance(model, CellformerModel):
        trained = model
    elif trained_already:
        trained = load_trained(model, query, min_gene_coverage, trust)
        info["model_dir"] = str(model)
    else:
        if reference is None or labels_key is None:
            raise _core.InputError(
                "Pass reference=... and labels_key=... to train a model, or model=DIR with a "
                "saved model to annotate without training."
            )
        genes = "shared" if adapt else genes
        train_on, key, overlap = prepare_reference(
            reference, query, labels_key, layer, genes, library_size_key, min_gene_coverage
        )
        info.update(n_shared_genes=overlap.n_shared, n_reference_genes=overlap.n_reference)
        setup = {"labels_key": labels_key, "layer": layer, "library_size_key": key}
        adapt_to = (query, query_layer, query_key) if adapt else None
        trained = train_on_reference(
            train_on, setup, model, max_epochs, reject_unknown, seed, progress, adapt_to
        )
        if model == "auto":
            trained, info["auto"] = auto_choice(trained, seed, progress, reject_unknown)
        if adapt:
            info["adapted"] = trained.adapted_to_
    options = {"min_gene_coverage": min_gene_coverage, "library_size_key": query_key}
    if label_ontology is not None:
        trained.set_label_ontology(label_ontology)
    trained.predict(
        query,
        layer=query_layer,
        key_prefix=key_prefix,
        reject_unknown=reject_unknown,
        majority_voting=majority_voting,
        over_clustering=over_clustering if majority_voting else None,
        # the latent (obsm) in the same pass over the query; majority voting over-clusters it
        latent=True,
        ontology=ontology,
        **options,
        progress=progress,
    )
    if save_model is not None:
        trained.save(str(save_model), overwrite=True)
        info["saved_to"] = str(save_model)
    info.update(
        model=type(trained).__name__,
        n_model_genes=len(trained.var_names),
        classes=list(trained.classes),
        key_prefix=key_prefix,
    )
    query.uns["cellformer"] = info
    return query


def _checked_query(
    query,
    reference,
    layer,
    query_layer,
    library_size_key,
    query_library_size_key,
    min_gene_coverage,
    copy: bool,
):
    """Check the query (and that neither data set is a path); return it, its layer, its key."""
    for name, value in (("query", query), ("reference", reference)):
        if isinstance(value, str | Path):
            raise _core.InputError(
                f"{name}={str(value)!r} is a path: read the file first, "
                f"{name} = sc.read_h5ad({str(value)!r}) (the CLI takes paths)."
            )
    if not isinstance(query, ad.AnnData):
        raise _core.InputError(f"query must be an AnnData, got {type(query).__name__}.")
    check_probability(closed=True, required=True, min_gene_coverage=min_gene_coverage)
    if copy:
        query = query.copy()
    _core.check_var_names(query)
    if query_layer is None and layer is not None and layer in query.layers:
        query_layer = layer
    pp.check_expression(query, query_layer, allow_empty_cells=True)
    query_key = query_library_size_key
    if query_key is None and library_size_key in query.obs:
        query_key = library_size_key
    if query_key is not None:
        _core.check_library_sizes(query, query_key)
    return query, query_layer, query_key


def _check_save_model(save_model, overwrite: bool) -> None:
    """Refuse, before any training, a ``save_model`` that is a file or exists (unless asked)."""
    if save_model is None or not Path(save_model).exists():
        return
    if not Path(save_model).is_dir():
        raise _core.OverwriteError(f"save_model={str(save_model)!r} is a file; name a directory.")
    if not overwrite:
        raise _core.OverwriteError(
            f"save_model={str(save_model)!r} already exists: pass overwrite=True (CLI "
            "--overwrite) to replace it, or another directory."
        )


def _check_adapt(model, trained_already: bool, reference, labels_key, genes) -> None:
    """``adapt=True`` trains a transformer on a labelled reference and the query, shared genes."""
    if trained_already or reference is None or labels_key is None:
        raise _core.InputError(
            "adapt=True trains a transformer on a labelled reference and the query: pass "
            "reference=... and labels_key=... with model='transformer' (not a trained model)."
        )
    if model == "auto":
        raise _core.InputError(
            "adapt=True with model='auto': adaptation is for the transformer; pass "
            "model='transformer' (its guard still falls back to the linear path where the head "
            "does not help)."
        )
    if model_class_of(model)[1] is None:
        raise _core.InputError(
            f"adapt=True is for the transformer (model='transformer' or 'transformer:PRESET'), "
            f"not model={model!r}: its linear path is adapted to the query as part of it."
        )
    if genes == "all":
        raise _core.InputError(
            "adapt=True trains on the reference and the query together, on the genes they share: "
            "use genes='shared' (or 'auto')."
        )
