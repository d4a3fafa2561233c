"""Reference → query annotation across gene panels, against logistic regression on the shared genes.

A held-out pair is built from one labelled data set (default: PBMC3k, 2,000 HVG counts with
`nCount_RNA`): cells are split in half (stratified); the reference keeps every gene, the query
only a random subset of them (default 270) plus one column with the rest of each cell's counts,
so that the query's row sums are its whole-transcriptome library sizes, as in a real file.
`cf.tl.annotate` (linear and transformer) then annotates the query with library_size_key, and
scikit-learn's class-balanced LogisticRegression (C tuned by 5-fold CV on the reference) is fit on
the same shared genes, normalised by the same libraries. Prints a table, writes JSON.

    python benchmarks/annotate.py [--data PATH] [--n-shared 270] [--seeds 0 1 2] [--out annotate.json]
"""

import argparse
import json
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import f1_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import cellformer as cf

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_seurat_2000hvg.h5ad"


def make_pair(data: ad.AnnData, library_key: str, n_shared: int, seed: int):
    rng = np.random.default_rng(seed)
    labels = data.obs["cell_type"].astype(str)
    ref_idx, q_idx = train_test_split(
        np.arange(data.n_obs), test_size=0.5, random_state=seed, stratify=labels
    )
    reference = data[np.sort(ref_idx)].copy()
    genes = np.sort(rng.choice(data.n_vars, n_shared, replace=False))
    q = data[np.sort(q_idx)]
    X = sp.csr_matrix(q.X[:, genes], dtype=np.float32)
    rest = q.obs[library_key].to_numpy() - np.asarray(X.sum(1)).ravel()
    query = ad.AnnData(
        X=sp.hstack([X, sp.csr_matrix(rest[:, None].astype(np.float32))]).tocsr(),
        obs=q.obs[["cell_type"]].copy(),
        var=pd.DataFrame(index=[*q.var_names[genes], "OTHER_GENES"]),
    )
    return reference, query


def sklearn_reference(reference, query, library_key, seed):
    shared = reference.var_names.intersection(query.var_names)
    lib_r = reference.obs[library_key].to_numpy()[:, None]
    lib_q = np.asarray(query.X.sum(1)).ravel()[:, None]
    Xr = np.log1p(reference[:, shared].X.toarray() / lib_r * 1e4)
    Xq = np.log1p(query[:, shared].X.toarray() / lib_q * 1e4)
    start = time.perf_counter()
    pred = tuned_logistic_regression(Xr, reference.obs["cell_type"].astype(str), Xq, seed)
    return pred, time.perf_counter() - start


def tuned_logistic_regression(Xr, y, Xq, seed):
    """Labels of ``Xq`` by class-balanced LR on standardised ``Xr`` (C by 5-fold CV)."""
    scaler = StandardScaler().fit(Xr)
    model = LogisticRegressionCV(
        Cs=[0.01, 0.03, 0.1, 0.3, 1.0],
        class_weight="balanced",
        max_iter=2000,
        cv=5,
        random_state=seed,
    ).fit(scaler.transform(Xr), y)
    return np.asarray(model.predict(scaler.transform(Xq)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT))
    parser.add_argument("--library-size-key", default="nCount_RNA")
    parser.add_argument("--n-shared", type=int, default=270)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", default="linear,transformer")
    parser.add_argument("--out", default="annotate.json")
    args = parser.parse_args()
    data = ad.read_h5ad(args.data)
    rows = []
    for seed in args.seeds:
        reference, query = make_pair(data, args.library_size_key, args.n_shared, seed)
        truth = query.obs["cell_type"].astype(str).to_numpy()
        pred, seconds = sklearn_reference(reference, query, args.library_size_key, seed)
        rows.append(
            {
                "seed": seed,
                "model": "sklearn LR (CV C)",
                "macro_f1": f1_score(truth, pred, average="macro"),
                "accuracy": float((pred == truth).mean()),
                "fit_s": seconds,
            }
        )
        for kind in args.models.split(","):
            q = query.copy()
            del q.obs["cell_type"]
            start = time.perf_counter()
            cf.tl.annotate(
                q,
                reference=reference,
                labels_key="cell_type",
                model=kind,
                library_size_key=args.library_size_key,
                seed=seed,
                progress=False,
            )
            seconds = time.perf_counter() - start
            pred = q.obs["cellformer_prediction"].astype(str).to_numpy()
            rows.append(
                {
                    "seed": seed,
                    "model": f"cellformer {kind}",
                    "macro_f1": f1_score(truth, pred, average="macro"),
                    "accuracy": float((pred == truth).mean()),
                    "fit_s": seconds,
                    "n_model_genes": q.uns["cellformer"]["n_model_genes"],
                }
            )
        print(
            pd.DataFrame(rows[-1 - len(args.models.split(",")) :]).to_string(index=False),
            flush=True,
        )
    table = pd.DataFrame(rows)
    summary = table.groupby("model")[["macro_f1", "accuracy", "fit_s"]].agg(["mean", "std"])
    print(summary.round(3).to_string())
    Path(args.out).write_text(
        json.dumps({"rows": rows, "args": vars(args)}, indent=2, default=float)
    )


if __name__ == "__main__":
    main()
