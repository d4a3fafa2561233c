"""Out-of-core training: one pretraining epoch and a prediction pass over an on-disk h5ad.

Writes a synthetic counts h5ad (default 1,000,000 cells × 2,000 genes, ~8% non-zero, 5 cell
types) chunk by chunk, so the file never has to fit in memory; then, in a fresh process, opens
it with ``backed="r"`` and

1. runs one epoch of masked-expression pretraining of a small CellTransformer encoder
   (:func:`cellformer.model.pretrain`: cells streamed in chunks by
   :class:`cellformer.train.ChunkedCells`);
2. trains a small CellTransformer classifier for one epoch on the backed file (scvi-tools reads
   each minibatch's rows from disk; the tokenizer and scaler statistics are streamed in chunks);
3. annotates every cell with it (prediction reads the backed file in chunks).

The small model: d_model 32, 2 heads, 1 layer, no dropout (one epoch over many cells needs none;
on CPU, dropout's random masks cost as much as the attention), the default tokenizer.

Reports cells/s and the process's peak RSS (target < 4 GB) and writes JSON.

    python benchmarks/out_of_core.py --cells 1000000 --out benchmarks/results/out_of_core.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path


def write_synthetic(path: Path, n_cells: int, n_genes: int = 2000, n_types: int = 5,
                    density: float = 0.08, chunk: int = 50_000, seed: int = 0) -> None:  # fmt: skip
    """Write a CSR counts h5ad chunk by chunk (h5py appends; memory is one chunk)."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_types, n_cells)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{i}" for i in labels])},
        index=[f"c{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"g{j}" for j in range(n_genes)])
    ad.AnnData(obs=obs, var=var).write_h5ad(path)
    nnz_cell = int(n_genes * density)
    with h5py.File(path, "a") as f:
        if "X" in f:
            del f["X"]
        group = f.create_group("X")
        group.attrs.update({"encoding-type": "csr_matrix", "encoding-version": "0.1.0",
                            "shape": (n_cells, n_genes)})  # fmt: skip
        data = group.create_dataset("data", (0,), maxshape=(None,), dtype="float32", chunks=True)
        indices = group.create_dataset(
            "indices", (0,), maxshape=(None,), dtype="int32", chunks=True
        )
        indptr = [0]
        for start in range(0, n_cells, chunk):
            lab = labels[start : start + chunk]
            n = len(lab)
            markers = lab[:, None] * (n_genes // n_types) + rng.integers(0, 50, (n, 20))
            rest = rng.integers(0, n_genes, (n, nnz_cell - 20))
            cols = np.sort(np.concatenate([markers, rest], axis=1), axis=1)
            keep = np.ones_like(cols, dtype=bool)
            keep[:, 1:] = cols[:, 1:] != cols[:, :-1]  # no duplicated genes in a cell
            vals = rng.poisson(2.0, cols.shape).astype(np.float32) + 1
            counts = keep.sum(1)
            old = data.shape[0]
            data.resize((old + counts.sum(),))
            indices.resize((old + counts.sum(),))
            data[old:] = vals[keep]
            indices[old:] = cols[keep].astype(np.int32)
            indptr.extend((indptr[-1] + np.cumsum(counts)).tolist())
        group.create_dataset("indptr", data=np.asarray(indptr, dtype=np.int64))


def measure(path: Path, epochs: int, predict: bool = True, pretraining: bool = True) -> dict:
    """Train and predict on the backed file; runs in its own process."""
    import logging

    import anndata as ad

    from cellformer._utils import quiet_training
    from cellformer.model import CellTransformer, pretrain

    logging.disable(logging.WARNING)
    adata = ad.read_h5ad(path, backed="r")
    small = {"d_model": 32, "n_heads": 2, "dropout": 0.0}
    result = {"cells": adata.n_obs, "genes": adata.n_vars, "epochs": epochs}
    if pretraining:
        start = time.perf_counter()
        pretrain(adata, max_epochs=epochs, batch_size=256, chunk_size=8192, validation_size=0.0,
                 enable_progress_bar=False, **small)  # fmt: skip
        result["pretrain_cells_per_s"] = epochs * adata.n_obs / (time.perf_counter() - start)
        result["peak_rss_gb_after_pretrain"] = (
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        )
    start = time.perf_counter()
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, linear_path=False, **small)
    with quiet_training():
        model.train(max_epochs=epochs, batch_size=256, validation_size=0.01,
                    enable_progress_bar=False)  # fmt: skip
    train_s = time.perf_counter() - start
    rss_train = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    result["train_cells_per_s"] = epochs * adata.n_obs / train_s
    result["peak_rss_gb_after_train"] = rss_train
    if predict:
        start = time.perf_counter()
        pred = model.predict(adata, key_prefix=None, batch_size=4096)
        result["predict_cells_per_s"] = adata.n_obs / (time.perf_counter() - start)
        labels = adata.obs["cell_type"].astype(str).to_numpy()
        result["accuracy_all_cells"] = float((pred == labels).mean())
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--file", default=None, help="h5ad to (re)use (default: a temp file)")
    parser.add_argument("--out", default="benchmarks/results/out_of_core.json")
    parser.add_argument(
        "--no-predict", action="store_true", help="skip annotating every cell (step 3)"
    )
    parser.add_argument(
        "--no-pretrain", action="store_true", help="skip the pretraining epoch (step 1)"
    )
    parser.add_argument("--_measure", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        result = measure(
            Path(args._measure), args.epochs, not args.no_predict, not args.no_pretrain
        )
        print(json.dumps(result))
        return
    path = Path(args.file or f"/tmp/cellformer_synthetic_{args.cells}.h5ad")
    if not path.exists():
        start = time.perf_counter()
        write_synthetic(path, args.cells)
        print(
            f"wrote {path} ({path.stat().st_size / 2**30:.2f} GB) in {time.perf_counter() - start:.0f} s"
        )
    done = subprocess.run(
        [sys.executable, __file__, "--_measure", str(path), "--epochs", str(args.epochs)]
        + ["--no-predict"] * args.no_predict
        + ["--no-pretrain"] * args.no_pretrain,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    for key, value in result.items():
        print(f"{key:>28}: {value:,.3f}" if isinstance(value, float) else f"{key:>28}: {value}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
