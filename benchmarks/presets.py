"""Tokenizer ablation: the same CellTransformer with each tokenizer preset, beside the linear model.

Everything but the tokenizer is fixed (Heimdall-style); ``--overrides`` changes what a preset
needs to run at all (e.g. scBERT's 2,000-token cells with sparse attention). Runs
:func:`cellformer.bench.run` on the same k folds (preprocessing and tokenizer statistics fit
inside each training fold; finished rows are kept in ``OUT/runs.json``, so an interrupted run
resumes), prints the mean table (with the majority line and the predicted-class entropy) and
writes JSON and a report with figures.

    python benchmarks/presets.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --presets default geneformer scgpt scbert \\
        --overrides '{"scbert": {"attention": "knn", "train": {"max_epochs": 8}}}' \\
        --out benchmarks/results/presets_pbmc3k
    python benchmarks/presets.py --out benchmarks/results/presets_embedded   # embedded data
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
        "--overrides",
        type=json.loads,
        default={},
        help="JSON {preset: config} merged into a preset's transformer config",
    )
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument(
        "--only-folds", type=int, nargs="+", default=None, help="run only these fold indices"
    )
    parser.add_argument(
        "--no-linear-path",
        action="store_true",
        help="transformers without the linear path: the tokenizer's effect alone",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/presets")
    args = parser.parse_args()

    from rich.console import Console

    from cellformer import bench, datasets, pl
    from cellformer.bench._report import format_summary

    adata = datasets.load(args.data)
    models: dict[str, dict] = {"linear": {}, "sklearn_logreg": {}}
    for preset in args.presets:
        config: dict = {"model": "transformer", "tokenizer": preset}
        if args.no_linear_path:
            config["linear_path"] = False
        models[f"transformer:{preset}"] = {**config, **args.overrides.get(preset, {})}
    start = time.perf_counter()
    results = bench.run(
        adata,
        args.labels_key,
        models=models,
        split=bench.StratifiedKFold(args.folds, args.seed, only=args.only_folds),
        layer=args.layer,
        out=f"{args.out}/runs.json",
        embeddings=True,
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
        "split": bench.StratifiedKFold(args.folds, args.seed, only=args.only_folds).describe(),
        "models": models,
        "elapsed_s": time.perf_counter() - start,
    }
    figures = pl.benchmark_figures(results, args.out)
    path = bench.write_report(results, summary, args.out, meta, figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
