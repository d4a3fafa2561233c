"""Does masked-expression pretraining help when few cells are labelled?

A learning curve on one dataset (default: PBMC3k) at small label shares (default 5% and 20% of
each training fold), on the same folds for every model:

- ``linear``: the baseline;
- ``scratch`` / ``scratch_no_linear``: the default CellTransformer from random weights, with and
  without its linear path;
- ``pretrained_self`` / ``…_no_linear``: the same encoder pretrained on **every cell of the
  training fold with labels removed** (test cells are never seen; the tokenizer statistics come
  from those training cells too), then fine-tuned on the labelled share;
- ``pretrained_external`` / ``…_no_linear`` (with ``--external``): pretrained once on another
  dataset (default: the mouse immune cells; put on the labelled data's genes, symbols matched
  case-insensitively, i.e. mouse → human by symbol, an approximation of orthology, and zeros for
  genes it lacks), then fine-tuned.

Finished rows are kept in ``OUT/runs.json`` (an interrupted run resumes). Prints macro-F1 (mean ±
sd over folds) per label share and writes ``OUT/report.md``.

    python benchmarks/pretraining.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --external ../shared/data/mouse_immune_actinn.h5ad --out benchmarks/results/pretraining
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def align_genes(cells, genes):
    """``cells`` on the gene list ``genes`` (symbols matched case-insensitively; zeros elsewhere).

    The encoder then has the labelled data's genes, so fine-tuning sees every one of them; genes
    the external data lack are never expressed in pretraining.
    """
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    symbols = cells.var_names.str.upper()
    first = ~symbols.duplicated()
    column = dict(zip(symbols[first], np.flatnonzero(first), strict=True))
    target = [column.get(g) for g in genes.str.upper()]
    rows = [c for c in target if c is not None]
    cols = [j for j, c in enumerate(target) if c is not None]
    select = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(cells.n_vars, len(genes))
    )
    X = sp.csr_matrix(cells.X) @ select
    print(f"external data: {len(cols)} of {len(genes)} genes matched by symbol")
    return ad.AnnData(
        X=X.astype(np.float32), obs=cells.obs[[]].copy(), var=pd.DataFrame(index=genes)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="labelled h5ad (default: embedded data)")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--external", default=None, help="unlabelled h5ad to pretrain on once")
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.05, 0.2])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--pretrain",
        type=json.loads,
        default={"max_epochs": 100},
        help="JSON arguments of cellformer.model.pretrain (same architecture as the default model)",
    )
    parser.add_argument(
        "--fine-tune",
        type=json.loads,
        default={},
        help="JSON {suffix: from_pretrained arguments}: more fine-tuning variants of each "
        'pretrained model, e.g. \'{"frozen": {"trainable_layers": 0}}\' adds '
        "pretrained_self_frozen, pretrained_self_no_linear_frozen, ...",
    )
    parser.add_argument("--only-folds", type=int, nargs="+", default=None)
    parser.add_argument("--models", nargs="+", default=None, help="run only these models")
    parser.add_argument("--out", default="benchmarks/results/pretraining")
    args = parser.parse_args()

    from rich.console import Console

    from cellformer import bench, datasets, pl
    from cellformer.bench._report import learning_table
    from cellformer.model import PretrainedEncoder, pretrain

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    adata = datasets.load(args.data)
    start = time.perf_counter()
    models = {
        "linear": {},
        "scratch": {"model": "transformer"},
        "scratch_no_linear": {"model": "transformer", "linear_path": False},
        "pretrained_self": {"model": "pretrained", "pretrain": args.pretrain},
        "pretrained_self_no_linear": {
            "model": "pretrained",
            "pretrain": args.pretrain,
            "linear_path": False,
        },
    }
    external_s = None
    if args.external:
        path = out / "encoder_external"
        if not PretrainedEncoder.is_saved(path):
            import anndata as ad

            cells = align_genes(ad.read_h5ad(args.external), adata.var_names)
            t0 = time.perf_counter()
            encoder = pretrain(cells, seed=args.seed, enable_progress_bar=False, **args.pretrain)
            external_s = time.perf_counter() - t0
            encoder.save(path)
            print(f"pretrained on {cells.n_obs} cells of {args.external} in {external_s:.0f} s")
        encoder = str(path)
        models["pretrained_external"] = {"model": "pretrained", "encoder": encoder}
        models["pretrained_external_no_linear"] = {
            "model": "pretrained",
            "encoder": encoder,
            "linear_path": False,
        }
    pretrained = [name for name in models if name.startswith("pretrained_")]
    for suffix, options in args.fine_tune.items():
        models.update({f"{name}_{suffix}": {**models[name], **options} for name in pretrained})
    if args.models:
        models = {name: models[name] for name in args.models}
    results = bench.learning_curve(
        adata,
        args.labels_key,
        models=models,
        sizes=args.sizes,
        split=bench.StratifiedKFold(args.folds, args.seed, only=args.only_folds),
        out=out / "runs.json",
    )
    Console(width=200).print(learning_table(results).to_string())
    meta = {
        "data": args.data or "embedded pbmc68k_reduced",
        "external": args.external,
        "external_pretrain_s": external_s,
        "n_cells": adata.n_obs,
        "split": f"stratified {args.folds}-fold cross-validation (seed {args.seed})",
        "models": models,
        "train_sizes": args.sizes,
        "elapsed_s": time.perf_counter() - start,
    }
    figures = pl.benchmark_figures(results, out)
    path = bench.write_report(results, bench.summarize(results), out, meta, figures)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
