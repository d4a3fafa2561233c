"""Annotation under shift: reference and query from other labs, panels or chemistries.

Tasks (each with ``--seeds``; every model of a task and seed sees the same reference and query):

- ``pbmc3k_to_68k`` / ``pbmc68k_to_3k``: PBMC3k (Seurat tutorial labels, 10x v1 counts) and
  scanpy's pbmc68k_reduced (FACS-sorted populations, log-normalised), 268 shared genes, both
  mapped to one coarse vocabulary (:data:`COARSE` below; PBMC3k's platelets and pbmc68k's
  CD34+ cells are left out). The reference is a stratified 80 % of its data set (the seed
  draws it), the query the whole other data set.
- ``random_panel``: PBMC3k halves, the query on a random 270 of the 2,000 genes (as
  ``benchmarks/annotate.py``).
- ``mouse_simulated``: the mouse immune data in halves; the query half is shifted by a
  *simulated* chemistry: each gene scaled by a log-normal factor (sd 0.5) and 20 % of its
  counts dropped (binomial thinning), with a seed of its own.

Models: scikit-learn's class-balanced logistic regression on the shared genes (C by 5-fold CV),
``LinearClassifier``, the default ``CellTransformer`` and the same with ``adapt=True``, and
scANVI (``--scanvi``: SCVI then SCANVI on reference + query with the query unlabelled, as its
documentation does; pbmc68k_reduced's counts are recovered from its log-normalised values and
``n_counts``). Each run is its own process (its peak RSS is its own). Prints a table of
mean macro-F1 / accuracy / fit seconds / peak RSS per task and model, and writes JSON.

    python benchmarks/shift.py --seeds 0 1 2 --scanvi --out benchmarks/results/shift
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
#: One coarse vocabulary for PBMC3k's and pbmc68k_reduced's labels.
COARSE = {
    "Naive CD4 T": "CD4 T",
    "Memory CD4 T": "CD4 T",
    "CD14+ Mono": "monocyte",
    "FCGR3A+ Mono": "monocyte",
    "B": "B",
    "CD8 T": "CD8 T",
    "NK": "NK",
    "DC": "DC",
    "CD14+ Monocyte": "monocyte",
    "CD19+ B": "B",
    "CD4+/CD25 T Reg": "CD4 T",
    "CD4+/CD45RA+/CD25- Naive T": "CD4 T",
    "CD4+/CD45RO+ Memory": "CD4 T",
    "CD8+ Cytotoxic T": "CD8 T",
    "CD8+/CD45RA+ Naive Cytotoxic": "CD8 T",
    "CD56+ NK": "NK",
    "Dendritic": "DC",
}
TASKS = ("pbmc3k_to_68k", "pbmc68k_to_3k", "random_panel", "mouse_simulated")
MODELS = ("sklearn_lr", "linear", "transformer", "transformer_adapt", "scanvi")


def make_task(task: str, seed: int):
    """Return ``(reference, query, labels_key, reference library key, query library key)``."""
    import anndata as ad
    import numpy as np
    from sklearn.model_selection import train_test_split

    import cellformer as cf

    if task in ("pbmc3k_to_68k", "pbmc68k_to_3k"):
        p3 = ad.read_h5ad(SHARED / "pbmc3k_seurat_2000hvg.h5ad")
        p68 = cf.datasets.pbmc68k_reduced()
        for data in (p3, p68):
            data.obs["coarse"] = data.obs["cell_type"].astype(str).map(COARSE)
        p3, p68 = (d[d.obs["coarse"].notna()].copy() for d in (p3, p68))
        ref, query = (p3, p68) if task == "pbmc3k_to_68k" else (p68, p3)
        keep, _ = train_test_split(
            np.arange(ref.n_obs), train_size=0.8, random_state=seed, stratify=ref.obs["coarse"]
        )
        ref_key = "nCount_RNA" if task == "pbmc3k_to_68k" else None
        query_key = None if task == "pbmc3k_to_68k" else "nCount_RNA"
        return ref[np.sort(keep)].copy(), query, "coarse", ref_key, query_key
    if task == "random_panel":
        sys.path.insert(0, str(Path(__file__).parent))
        from annotate import make_pair

        data = ad.read_h5ad(SHARED / "pbmc3k_seurat_2000hvg.h5ad")
        ref, query = make_pair(data, "nCount_RNA", 270, seed)
        return ref, query, "cell_type", "nCount_RNA", None
    if task == "mouse_simulated":
        data = ad.read_h5ad(SHARED / "mouse_immune_actinn.h5ad")
        labels = data.obs["cell_type"].astype(str)
        a, b = train_test_split(
            np.arange(data.n_obs), test_size=0.5, random_state=seed, stratify=labels
        )
        ref, query = data[np.sort(a)].copy(), data[np.sort(b)].copy()
        rng = np.random.default_rng(1000 + seed)
        factor = rng.lognormal(0.0, 0.5, size=query.n_vars)
        X = query.X.tocsr().astype(np.float64)
        X = X.multiply(factor[None, :]).tocsr()
        X.data = rng.binomial(np.round(X.data).astype(np.int64), 0.8).astype(np.float64)
        X.eliminate_zeros()
        query.X = X.astype(np.float32)
        empty = np.asarray(query.X.sum(1)).ravel() == 0
        return ref, query[~empty].copy(), "cell_type", None, None
    raise ValueError(f"unknown task {task!r}")


def sklearn_lr(ref, query, labels_key, ref_key, query_key, seed):
    sys.path.insert(0, str(Path(__file__).parent))
    from annotate import tuned_logistic_regression

    from cellformer.model.base._adapt import _lognorm_block

    shared = ref.var_names.intersection(query.var_names)
    Xr = _lognorm_block(ref, None, shared, ref_key).toarray()
    Xq = _lognorm_block(query, None, shared, query_key).toarray()
    return tuned_logistic_regression(Xr, ref.obs[labels_key].astype(str), Xq, seed)


def counts_of(adata):
    """Counts as scVI needs them: as they are, or recovered from log-normalised values.

    pbmc68k_reduced keeps log1p of counts per 10,000 of each cell's total (``obs["n_counts"]``):
    ``expm1(x) * n_counts / 1e4`` gives the counts back (within 0.09 of integers: float32).
    """
    import numpy as np
    import scipy.sparse as sp

    from cellformer._core import detect_expression_kind

    if detect_expression_kind(adata.X) == "counts":
        return adata
    if "n_counts" not in adata.obs:
        raise ValueError("scANVI needs counts: log-normalised data without obs['n_counts']")
    X = sp.csr_matrix(adata.X, dtype=np.float64)
    X = sp.csr_matrix(sp.diags(adata.obs["n_counts"].to_numpy() / 1e4) @ X.expm1())
    X.data = np.round(X.data)
    out = adata.copy()
    out.X = sp.csr_matrix(X, dtype=np.float32)
    return out


def scanvi(ref, query, labels_key, ref_key, query_key, seed):
    """SCVI → SCANVI on reference + query counts (query unlabelled), as scvi-tools documents."""
    import anndata as ad
    import numpy as np
    import scvi

    shared = ref.var_names.intersection(query.var_names)
    sides = [counts_of(ref)[:, shared], counts_of(query)[:, shared]]
    both = ad.concat(sides, label="dataset", keys=["reference", "query"], index_unique="-")
    labels = np.concatenate(
        [ref.obs[labels_key].astype(str).to_numpy(), np.full(query.n_obs, "Unknown")]
    )
    both.obs["labels"] = labels
    scvi.settings.seed = seed
    scvi.model.SCVI.setup_anndata(both, batch_key="dataset", labels_key="labels")
    vae = scvi.model.SCVI(both)
    vae.train(max_epochs=100, enable_progress_bar=False)
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="Unknown")
    model.train(max_epochs=20, n_samples_per_label=100, enable_progress_bar=False)
    return np.asarray(model.predict(both[both.obs["dataset"] == "query"]))


def run_one(task: str, model: str, seed: int) -> dict:

    import cellformer as cf

    ref, query, labels_key, ref_key, query_key = make_task(task, seed)
    truth = query.obs[labels_key].astype(str).to_numpy()
    q = query.copy()
    del q.obs[labels_key]
    start = time.perf_counter()
    if model == "sklearn_lr":
        pred = sklearn_lr(ref, q, labels_key, ref_key, query_key, seed)
    elif model == "scanvi":
        pred = scanvi(ref, q, labels_key, ref_key, query_key, seed)
    else:
        kind = "linear" if model == "linear" else "transformer"
        cf.tl.annotate(
            q,
            reference=ref,
            labels_key=labels_key,
            model=kind,
            adapt=model.endswith("_adapt"),
            genes="shared",
            library_size_key=ref_key,
            query_library_size_key=query_key,
            seed=seed,
            progress=False,
        )
        pred = q.obs["cellformer_prediction"].astype(str).to_numpy()
    seconds = time.perf_counter() - start
    scores = cf.bench.classification_metrics(truth, pred)
    return {
        "task": task,
        "model": model,
        "seed": seed,
        "macro_f1": scores["macro_f1"],
        "accuracy": scores["accuracy"],
        "fit_s": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "n_reference": ref.n_obs,
        "n_query": query.n_obs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--models", nargs="+", default=[m for m in MODELS if m != "scanvi"])
    parser.add_argument("--scanvi", action="store_true", help="add scANVI (slow on 2 cores)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/shift")
    parser.add_argument("--one", nargs=3, default=None, help=argparse.SUPPRESS)  # child
    args = parser.parse_args()
    if args.one is not None:
        task, model, seed = args.one
        print(json.dumps(run_one(task, model, int(seed))))
        return

    import pandas as pd

    models = [*args.models, *(["scanvi"] if args.scanvi else [])]
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            for model in models:
                cmd = [sys.executable, __file__, "--one", task, model, str(seed)]
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    error = (done.stderr.strip().splitlines() or ["failed"])[-1]
                    rows.append({"task": task, "model": model, "seed": seed, "error": error})
                else:
                    rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    numeric = [c for c in ("macro_f1", "accuracy", "fit_s", "peak_rss_gb") if c in table]
    summary = table.groupby(["task", "model"], sort=False)[numeric].mean()
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shift.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
