"""Tokenizer presets against the linear baseline: k-fold CV on the same folds.

Runs :func:`cellformer.bench.cross_validate` (preprocessing and tokenizer statistics fit inside
each training fold) for the linear model, scikit-learn's logistic regression and the
``CellTransformer`` with each requested tokenizer preset; prints the per-fold and mean tables
(with the majority-class line and the predicted-class entropy) and writes JSON and markdown.

    python benchmarks/presets.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --presets default geneformer scgpt --out benchmarks/results/presets_pbmc3k
    python benchmarks/presets.py --presets default geneformer scgpt scbert \\
        --out benchmarks/results/presets_embedded          # embedded pbmc68k_reduced data
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
    parser.add_argument("--presets", nargs="+", default=["default", "geneformer", "scgpt"])
    parser.add_argument(
        "--max-epochs",
        type=json.loads,
        default={},
        help="JSON {preset: epochs} to cap slow presets, e.g. '{\"scbert\": 15}'",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/presets")
    args = parser.parse_args()

    from rich.console import Console

    from cellformer import bench, datasets
    from cellformer.bench._report import format_summary

    adata = datasets.load(args.data)
    models: dict[str, dict] = {"linear": {}, "sklearn_logreg": {}}
    for preset in args.presets:
        config: dict = {"model": "transformer", "tokenizer": preset}
        if preset in args.max_epochs:
            config["train"] = {"max_epochs": args.max_epochs[preset]}
        models[f"transformer:{preset}"] = config
    start = time.perf_counter()
    results = bench.cross_validate(
        adata,
        args.labels_key,
        models=models,
        layer=args.layer,
        n_folds=args.folds,
        seed=args.seed,
    )
    summary = bench.summarize(results)
    table = format_summary(summary)
    table.index.name = "model"
    Console(width=160).print(table.to_string())
    meta = {
        "data": args.data or "embedded pbmc68k_reduced",
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_classes": int(adata.obs[args.labels_key].nunique()),
        "labels_key": args.labels_key,
        "n_folds": args.folds,
        "seed": args.seed,
        "models": models,
        "elapsed_s": time.perf_counter() - start,
    }
    path = bench.write_report(results, summary, args.out, meta)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
