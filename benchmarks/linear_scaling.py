"""Throughput and peak memory of LinearClassifier training as the number of cells grows.

Synthetic sparse counts (2,000 genes, ~8% non-zero, 5 cell types). Each size runs in its own
process; peak RSS is the process maximum. Prints a table and writes JSON.

    python benchmarks/linear_scaling.py --cells 10000 100000 --out benchmarks/results/linear_scaling.json
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time
from pathlib import Path


def make(n_cells: int, n_genes: int = 2000, n_types: int = 5, density: float = 0.08, seed: int = 0):
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_types, n_cells)
    nnz_per_cell = int(n_genes * density)
    indptr = np.arange(0, (n_cells + 1) * nnz_per_cell, nnz_per_cell)
    markers = labels[:, None] * (n_genes // n_types) + rng.integers(0, 50, (n_cells, 20))
    rest = rng.integers(0, n_genes, (n_cells, nnz_per_cell - 20))
    cols = np.sort(np.concatenate([markers, rest], axis=1), axis=1)
    data = rng.poisson(2.0, cols.shape).astype(np.float32) + 1
    X = sp.csr_matrix((data.ravel(), cols.ravel(), indptr), shape=(n_cells, n_genes))
    X.sum_duplicates()
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{i}" for i in labels])},
        index=[f"c{i}" for i in range(n_cells)],
    )
    return ad.AnnData(X=X, obs=obs, var=pd.DataFrame(index=[f"g{j}" for j in range(n_genes)]))


def run_one(n_cells: int, epochs: int) -> dict:
    from cellformer._utils import quiet_training
    from cellformer.model import LinearClassifier

    logging.disable(logging.WARNING)
    adata = make(n_cells)
    LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    model = LinearClassifier(adata)
    start = time.perf_counter()
    with quiet_training():
        model.train(max_epochs=epochs, batch_size=1024, enable_progress_bar=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    pred = model.predict(key_prefix=None, batch_size=4096)
    predict_s = time.perf_counter() - start
    acc = float((pred == adata.obs["cell_type"].to_numpy()).mean())
    return {
        "n_cells": n_cells,
        "epochs": epochs,
        "train_cells_per_s": n_cells * epochs / train_s,
        "predict_cells_per_s": n_cells / predict_s,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
        "train_accuracy": acc,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cells", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/linear_scaling.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.epochs)))
        return
    rows = []
    for n in args.cells:
        out = subprocess.run(
            [sys.executable, __file__, "--one", str(n), "--epochs", str(args.epochs)],
            capture_output=True,
            text=True,
            check=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(
        f"{'cells':>10} {'train cells/s':>14} {'predict cells/s':>16} {'peak RSS GB':>12} {'train acc':>10}"
    )
    for r in rows:
        print(
            f"{r['n_cells']:>10} {r['train_cells_per_s']:>14.0f} {r['predict_cells_per_s']:>16.0f} "
            f"{r['peak_rss_gb']:>12.2f} {r['train_accuracy']:>10.3f}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
