"""Atlas-size queries: time and peak memory of ``cellformer annotate`` on 0.1M–2M cells.

Queries are real PBMC3k cells (counts, 2,000 genes) tiled to the size asked for, each copy
jittered (its counts binomially thinned to a random 80–100 %, so no two cells are equal), and
written chunk by chunk to a temporary ``.h5ad`` (never held in memory). A linear model and a
small transformer are trained on PBMC3k and saved; then, per size and model, the command line
annotates the file in a child process (``cellformer annotate --model DIR --query FILE --out
...``), with and without ``--majority-voting``: wall seconds, cells/s, the child's peak RSS.
Prints a table and writes JSON.

    python benchmarks/large_query.py --sizes 100000 500000 1000000 2000000
    python benchmarks/large_query.py --sizes 200000 --models linear --no-voting
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_query(path: Path, base, n_cells: int, seed: int = 0, chunk: int = 50_000) -> None:
    """Write ``n_cells`` jittered copies of ``base``'s cells (CSR counts) chunk by chunk."""
    import anndata as ad
    import h5py
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    try:
        from anndata.io import sparse_dataset, write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import sparse_dataset, write_elem

    rng = np.random.default_rng(seed)
    X = sp.csr_matrix(base.X, dtype=np.float32)

    def block(start: int, stop: int) -> sp.csr_matrix:
        rows = np.arange(start, stop) % X.shape[0]
        part = X[rows].tocsr()
        keep = rng.uniform(0.8, 1.0, size=len(rows))
        counts = part.data.astype(np.int64)
        part.data = rng.binomial(counts, np.repeat(keep, np.diff(part.indptr))).astype(np.float32)
        part.eliminate_zeros()
        return part

    first = block(0, min(chunk, n_cells))
    var = pd.DataFrame(index=base.var_names.astype(str))
    ad.AnnData(X=first, var=var).write_h5ad(path)
    with h5py.File(path, "a") as f:
        matrix = sparse_dataset(f["X"])
        for start in range(first.shape[0], n_cells, chunk):
            matrix.append(block(start, min(start + chunk, n_cells)))
        del f["obs"]
        obs = pd.DataFrame(index=pd.Index([f"cell{i}" for i in range(n_cells)], dtype=str))
        write_elem(f, "obs", obs)


def train_models(data, out: Path, names: list[str]) -> dict[str, Path]:
    """Train and save the models to annotate with (on every PBMC3k cell)."""
    import cellformer as cf

    saved = {}
    for name in names:
        adata = data.copy()
        if name == "linear":
            cf.model.LinearClassifier.setup_anndata(adata, labels_key="cell_type")
            model = cf.model.LinearClassifier(adata)
            model.train(enable_progress_bar=False)
        else:
            cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
            model = cf.model.CellTransformer(adata)
            model.train(enable_progress_bar=False)
        saved[name] = out / name
        model.save(saved[name], overwrite=True)
    return saved


def run_cli(argv: list[str]) -> dict:
    """Run the command line in a child process: seconds and the child's peak RSS."""
    code = (
        "import json, resource, sys\n"
        "from cellformer.cli import main\n"
        f"rc = main({argv!r})\n"
        "rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20\n"
        "print(json.dumps({'rc': rc, 'peak_rss_gb': rss}))\n"
    )
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "{}"
    try:
        result = json.loads(last)
    except json.JSONDecodeError:
        result = {"rc": done.returncode}
    if result.get("rc") != 0:
        result["error"] = done.stderr[-2000:]
    return {"seconds": round(seconds, 1), **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k_seurat_2000hvg.h5ad")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 1_000_000])
    parser.add_argument("--models", nargs="+", default=["linear", "transformer"])
    parser.add_argument("--no-voting", action="store_true", help="skip --majority-voting runs")
    parser.add_argument("--extra", nargs="*", default=[], help="more CLI arguments")
    parser.add_argument("--tmp", default=None, help="folder for the query files")
    parser.add_argument("--out", default="benchmarks/results/large_query")
    args = parser.parse_args()

    import anndata as ad

    data = ad.read_h5ad(args.data)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        saved = train_models(data, tmp, args.models)
        for n in args.sizes:
            query = tmp / f"query_{n}.h5ad"
            start = time.perf_counter()
            write_query(query, data, n)
            size_gb = os.path.getsize(query) / 2**30
            print(f"{n} cells: {size_gb:.2f} GB written in {time.perf_counter() - start:.0f} s")
            for name in args.models:
                for voting in [False] if args.no_voting else [False, True]:
                    out = tmp / "annotated.h5ad"
                    argv = ["annotate", "--model", str(saved[name]), "--query", str(query)]
                    argv += ["--out", str(out), "--overwrite", "--no-progress", *args.extra]
                    if voting:
                        argv.append("--majority-voting")
                    result = run_cli(argv)
                    row = {
                        "cells": n,
                        "file_gb": round(size_gb, 2),
                        "model": name,
                        "majority_voting": voting,
                        **result,
                        "cells_per_s": round(n / result["seconds"]),
                    }
                    rows.append(row)
                    print(json.dumps({k: v for k, v in row.items() if k != "error"}), flush=True)
                    if "error" in row:
                        print(row["error"], file=sys.stderr)
            query.unlink()
    import pandas as pd

    table = pd.DataFrame(rows)
    print(table.drop(columns=["error"], errors="ignore").to_string(index=False))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "large_query.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
