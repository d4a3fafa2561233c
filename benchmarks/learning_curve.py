"""Is my data big enough for a transformer? Linear vs transformer on growing training sets.

Runs :func:`cellformer.bench.learning_curve`: each model is trained on nested stratified
subsets (``--sizes``, shares of each training fold) and scored on the same test fold, so the
curves show what more cells buy. Finished rows are kept in ``OUT/runs.json`` (an interrupted
run resumes). Prints macro-F1 (mean ± sd over folds) per size and writes a report with the
learning-curve figure.

    python benchmarks/learning_curve.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --out benchmarks/results/learning_curve_pbmc3k
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="h5ad (default: embedded pbmc68k_reduced)")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--layer", default=None)
    parser.add_argument(
        "--models",
        type=json.loads,
        default={"linear": {}, "transformer": {}},
        help="JSON {name: config} as for cellformer.bench.parse_models",
    )
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/learning_curve")
    args = parser.parse_args()

    from rich.console import Console

    from cellformer import bench, datasets, pl
    from cellformer.bench._report import learning_table

    adata = datasets.load(args.data)
    start = time.perf_counter()
    results = bench.learning_curve(
        adata,
        args.labels_key,
        models=args.models,
        sizes=args.sizes,
        split=bench.StratifiedKFold(args.folds, args.seed),
        layer=args.layer,
        out=f"{args.out}/runs.json",
    )
    Console(width=160).print(learning_table(results).to_string())
    meta = {
        "data": args.data or "embedded pbmc68k_reduced",
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_classes": int(adata.obs[args.labels_key].nunique()),
        "labels_key": args.labels_key,
        "split": f"stratified {args.folds}-fold cross-validation (seed {args.seed})",
        "models": args.models,
        "train_sizes": args.sizes,
        "elapsed_s": time.perf_counter() - start,
    }
    figures = pl.benchmark_figures(results, args.out)
    path = bench.write_report(results, bench.summarize(results), args.out, meta, figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
