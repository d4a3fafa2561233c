"""The benchmark runner: every model on the same splits, preprocessing fit inside each split."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cellformer import pp
from cellformer._settings import settings
from cellformer._utils import quiet_training

from ._metrics import (
    calibration_metrics,
    classification_metrics,
    majority_baseline,
    per_class_f1,
)
from ._models import (
    MODELS,
    SklearnLogisticRegression,
    n_parameters,
    parse_models,
    predict_probabilities,
)
from ._splits import (
    Fold,
    LeaveOneGroupOut,
    PredefinedSplit,
    StratifiedKFold,
    make_split,
    subsample_training,
)

__all__ = ["cross_validate", "learning_curve", "run"]

logger = logging.getLogger("cellformer")

#: Columns that identify one result row (a model on one split at one training size).
KEY = ("split", "train_size", "model")


@contextmanager
def _peak_memory():
    """Track the process's resident memory in a thread; yields a dict filled with ``peak_mb``.

    ``peak_mb`` is the highest RSS seen above the RSS at entry (sampled every 10 ms), i.e. what
    fitting and predicting one model added.
    """
    import psutil

    process = psutil.Process()
    start = process.memory_info().rss
    state = {"peak": start, "running": True}

    def sample():
        while state["running"]:
            state["peak"] = max(state["peak"], process.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    result = {}
    try:
        yield result
    finally:
        state["running"] = False
        thread.join()
        state["peak"] = max(state["peak"], process.memory_info().rss)
        result["peak_mb"] = (state["peak"] - start) / 2**20


def _umap(latent: np.ndarray, seed: int) -> list[list[float]]:
    """2-D UMAP coordinates of an embedding (scanpy's neighbours + UMAP)."""
    import scanpy as sc

    tmp = ad.AnnData(np.zeros((latent.shape[0], 1), dtype=np.float32))
    tmp.obsm["X_latent"] = np.asarray(latent, dtype=np.float32)
    sc.pp.neighbors(tmp, use_rep="X_latent", n_neighbors=min(15, latent.shape[0] - 1))
    sc.tl.umap(tmp, random_state=seed)
    return np.round(tmp.obsm["X_umap"], 4).tolist()


def _fit_and_score(
    config: dict,
    train: ad.AnnData,
    test: ad.AnnData,
    novel: ad.AnnData | None,
    labels_key: str,
    layer: str | None,
    seed: int,
    embeddings: bool,
    unlabelled: ad.AnnData | None = None,
    split: str | None = None,
    ontology: dict | None = None,
) -> dict:
    """Fit one model on ``train``; metrics, cost and predictions on ``test``.

    Models that use unlabelled cells (see :data:`MODELS`) also get ``unlabelled``: the whole
    training split, labels removed.
    """
    config = dict(config)
    fit = MODELS[config.pop("model")]
    if getattr(fit, "uses_unlabelled", False):
        fit = partial(fit, unlabelled=unlabelled, split=split)
    y_test = test.obs[labels_key].astype(str).to_numpy()
    with _peak_memory() as memory:
        start = time.perf_counter()
        model = fit(train, labels_key, layer, seed, config)
        train_s = time.perf_counter() - start
        start = time.perf_counter()
        probs = predict_probabilities(model, test, layer)
        predict_s = time.perf_counter() - start
    classes = probs.columns.to_numpy(dtype=str)
    p = probs.to_numpy()
    pred = classes[p.argmax(axis=1)]
    row = {
        **classification_metrics(y_test, pred),
        **calibration_metrics(y_test, p, classes),
        "per_class_f1": per_class_f1(y_test, pred),
        "n_params": n_parameters(model),
        "train_s": train_s,
        "predict_cells_per_s": test.n_obs / max(predict_s, 1e-9),
        "peak_memory_mb": memory["peak_mb"],
        "y_true": y_test.tolist(),
        "y_pred": pred.tolist(),
        "confidence": np.round(p.max(axis=1), 5).tolist(),
    }
    if ontology is not None:
        row.update(_ontology_row(y_test, p, list(classes), **ontology))
    is_cellformer = not isinstance(model, SklearnLogisticRegression)
    if novel is not None and novel.n_obs and is_cellformer:
        flagged = novel.copy()
        model.predict(flagged, layer=layer, key_prefix="novel")
        if "novel_unknown" in flagged.obs:
            row["novel_flagged"] = float(flagged.obs["novel_unknown"].mean())
    if embeddings and is_cellformer and test.n_obs > 3:
        latent = model.get_latent_representation(test, layer=layer, key_prefix=None)
        row["umap"] = _umap(latent, seed)
    return row


def _ontology_row(y_test, probs, classes, terms, threshold, ontology) -> dict:
    """Ontology-aware scores of coarse answers (below ``threshold``) and of fine ones."""
    from cellformer.model.base import coarse_answers
    from cellformer.pp import ontology_scores

    answers, term_ids = coarse_answers(probs, classes, terms, ontology, threshold)
    coarse = ontology_scores(y_test, [t or "Unknown" for t in term_ids], terms, ontology)
    fine = ontology_scores(y_test, np.asarray(classes)[probs.argmax(1)], terms, ontology)
    return {
        "ontology_accuracy_fine": fine["ontology_accuracy"],
        "ontology_accuracy": coarse["ontology_accuracy"],
        "ontology_mean_depth": coarse["mean_depth"],
        "ontology_fine_depth": fine["mean_depth"],
        "ontology_fine_share": float(np.mean([a in terms for a in answers])),
    }


def _load_rows(path: Path | None) -> list[dict]:
    if path is None or not path.exists():
        return []
    payload = json.loads(path.read_text())
    return payload.get("rows", [])


def _save_rows(path: Path | None, rows: list[dict], meta: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, default=_json_default))
    tmp.replace(path)  # never leave a half-written file behind an interrupted run


def _json_default(value):
    if isinstance(value, np.integer | np.floating | np.bool_):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"Not JSON serialisable: {type(value).__name__}")


def run(
    adata: ad.AnnData,
    labels_key: str,
    models: dict[str, dict] | list[str] | str | None = None,
    split: StratifiedKFold | PredefinedSplit | LeaveOneGroupOut | str | None = None,
    layer: str | None = None,
    train_sizes: Sequence[float] | None = None,
    out: str | Path | None = None,
    resume: bool = True,
    embeddings: bool = False,
    progress: bool = True,
    label_ontology: dict[str, str] | None = None,
    ontology_threshold: float = 0.5,
) -> pd.DataFrame:
    """Benchmark models side by side on the same splits.

    For every split (and training size), each model is fit on the training cells only —
    including its preprocessing and tokenizer statistics — and scored on the test cells. A
    ``majority`` line (the training split's most frequent class) is added per split. One model
    failing is recorded in ``error`` and the run goes on.

    Parameters
    ----------
    adata
        Cells with curated cell types in ``obs[labels_key]``.
    labels_key
        Column of cell types.
    models
        Model names (``"linear"``, ``"transformer"``, ``"transformer:scgpt"``,
        ``"sklearn_logreg"``) or a mapping name → config (see :func:`parse_models`): a grid of
        tokenizer × attention × head configs is one call.
    split
        :class:`StratifiedKFold` (default, 5 folds), :class:`PredefinedSplit`, :class:`LeaveOneGroupOut`
        or a spec string for :func:`make_split`.
    layer
        Layer with counts or log-normalised values (``None``: ``X``).
    train_sizes
        Fractions of each training split to train on (nested stratified subsets, see
        :func:`subsample_training`); ``None``: the whole training split only.
    out
        JSON file that receives every row as soon as it is done.
    resume
        With ``out`` present, keep its finished rows and run only what is missing (rows that
        failed are run again).
    embeddings
        For the first split at the largest training size, keep 2-D UMAP coordinates of each
        cellformer model's latent space of the test cells (column ``umap``).
    progress
        Show a progress bar over splits × sizes × models.
    label_ontology
        ``{label: "CL:…"}`` (labels that are CL IDs, labels or synonyms map by themselves):
        also score coarse Cell Ontology answers (:meth:`~cellformer.model.CellformerModel.predict`
        with ``ontology=True``) for cells below ``ontology_threshold`` confidence: columns
        ``ontology_accuracy`` (the answer is the truth's term or an ancestor),
        ``ontology_accuracy_fine`` (the same for the fine labels), ``ontology_mean_depth`` (and
        ``ontology_fine_depth`` of the fine labels) and ``ontology_fine_share`` (cells that keep
        a fine label); :func:`cellformer.pl.ontology_depth` plots them.
    ontology_threshold
        Confidence below which a cell's answer becomes coarser.

    Returns
    -------
    A tidy DataFrame, one row per split × training size × model: ``split``, ``fold`` (index),
    ``seed``, ``train_size``, ``n_train``, ``n_test``, ``n_novel``, ``model``, the metrics of
    :func:`classification_metrics` and :func:`calibration_metrics`, ``per_class_f1`` (dict),
    ``n_params``, ``train_s``, ``predict_cells_per_s``, ``peak_memory_mb``, ``error``, the test
    cells' ``y_true``, ``y_pred`` and ``confidence`` (lists), and ``novel_flagged`` (share of
    novel cells called Unknown) where it applies.
    """
    pp.validate_anndata(adata, layer, labels_key)
    ontology = None
    if label_ontology is not None:
        cl = pp.cell_ontology()
        terms, unmatched = cl.map_labels(adata.obs[labels_key].astype(str).unique(), label_ontology)
        if unmatched:
            logger.warning("No Cell Ontology term for %s: not scored by the ontology.", unmatched)
        ontology = {"terms": terms, "threshold": ontology_threshold, "ontology": cl}
    models = parse_models(models)
    split = make_split(split)
    sizes = sorted({float(s) for s in (train_sizes or [1.0])})
    path = Path(out) if out is not None else None
    rows = _load_rows(path) if resume else []
    done = {tuple(r[k] for k in KEY) for r in rows if r.get("error") is None}
    rows = [r for r in rows if tuple(r[k] for k in KEY) in done]
    if done:
        logger.info("Resuming from %s: %d finished rows kept.", path, len(done))
    meta = {"labels_key": labels_key, "layer": layer, "split": split.describe()}
    y = adata.obs[labels_key].astype(str).to_numpy()
    folds: list[Fold] = list(split.split(adata, labels_key))
    # torch, Lightning and scvi-tools import once per process (about 4 s on 2 cores): not part
    # of the first model's train_s
    import cellformer.model  # noqa: F401

    pretraining = any(
        getattr(MODELS[c["model"]], "uses_unlabelled", False) for c in models.values()
    )
    with (
        quiet_training(),
        Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TimeElapsedColumn(),
            disable=not (progress and settings.shows_info),
            transient=True,
        ) as bar,
    ):
        task = bar.add_task("benchmark", total=len(folds) * len(sizes) * len(models))
        for index, fold in enumerate(folds):
            subsets = subsample_training(fold.train, y, sizes, seed=fold.seed)
            test = adata[fold.test].copy()
            novel = adata[fold.novel].copy() if len(fold.novel) else None
            pool = None  # the whole training split, unlabelled, for models that pretrain on it
            if pretraining:
                pool = adata[fold.train].copy()
                del pool.obs[labels_key]
            for size in sizes:
                train_idx = subsets[size]
                base = {
                    "split": fold.name,
                    "fold": index,
                    "seed": fold.seed,
                    "train_size": size,
                    "n_train": len(train_idx),
                    "n_test": len(fold.test),
                    "n_novel": len(fold.novel),
                }
                if ("majority" not in models) and (fold.name, size, "majority") not in done:
                    rows.append(
                        {
                            **base,
                            "model": "majority",
                            **majority_baseline(y[train_idx], y[fold.test]),
                            "n_params": 0,
                            "error": None,
                        }
                    )
                    done.add((fold.name, size, "majority"))
                train = adata[train_idx].copy()
                train.obs[labels_key] = train.obs[labels_key].astype(str).astype("category")
                for name, config in models.items():
                    bar.update(task, description=f"{fold.name} · {size:g} · {name}")
                    if (fold.name, size, name) in done:
                        bar.advance(task)
                        continue
                    try:
                        row = _fit_and_score(
                            config,
                            train.copy(),
                            test,
                            novel,
                            labels_key,
                            layer,
                            fold.seed,
                            embeddings and index == 0 and size == sizes[-1],
                            unlabelled=pool,
                            split=fold.name,
                            ontology=ontology,
                        )
                        row["error"] = None
                    except Exception as err:  # noqa: BLE001 - one failing model must not end the run
                        logger.error("Model %s failed on %s: %s", name, fold.name, err)
                        row = {"error": f"{type(err).__name__}: {err}"}
                    rows.append({**base, "model": name, **row})
                    _save_rows(path, rows, meta)
                    bar.advance(task)
    _save_rows(path, rows, meta)
    frame = pd.DataFrame(rows)
    order = {f.name: i for i, f in enumerate(folds)}
    frame = frame[frame["split"].isin(order)]  # rows of another split in a reused file
    frame = frame.sort_values(
        ["split", "train_size"],
        key=lambda c: c.map(order) if c.name == "split" else c,
        kind="stable",
    )
    frame.attrs["split"] = split.describe()
    return frame.reset_index(drop=True)


def learning_curve(
    adata: ad.AnnData,
    labels_key: str,
    models: dict[str, dict] | list[str] | str | None = ("linear", "transformer"),
    sizes: Sequence[float] = (0.05, 0.1, 0.2, 0.5, 1.0),
    split: StratifiedKFold | PredefinedSplit | LeaveOneGroupOut | str | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Train each model on growing nested subsets of every training split.

    The test cells stay the same across sizes, so the curve shows what more cells buy. Returns
    the rows of :func:`run`; plot with :func:`cellformer.pl.learning_curve` (metric against cells
    or against parameters).
    """
    if not isinstance(models, dict | str):
        models = list(models)
    return run(adata, labels_key, models, split=split, train_sizes=sizes, **kwargs)


def cross_validate(
    adata: ad.AnnData,
    labels_key: str,
    models: dict[str, dict] | list[str] | None = None,
    layer: str | None = None,
    n_folds: int = 5,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Stratified k-fold cross-validation of several models on the same folds.

    Shorthand for ``run(adata, labels_key, models, split=StratifiedKFold(n_folds, seed), ...)``: every
    model fits its preprocessing on the training fold only and the majority-class line is the
    model ``majority``. See :func:`~cellformer.bench.run` for the columns.
    """
    return run(
        adata,
        labels_key,
        models,
        split=StratifiedKFold(n_folds, seed),
        layer=layer,
        progress=progress,
    )
