"""Unknown-cell detection and calibration: hold out each of several cell types in turn.

For each held-out type, :func:`cellformer.bench.holdout_class` trains every model without it
(preprocessing fit on the training cells), then reports known-type macro-F1, ECE and NLL on the
known-type test cells and the AUROC of each uncertainty score for flagging the held-out cells.
Prints the per-type table and the mean over types; writes JSON.

    python benchmarks/uncertainty.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --held-out B NK "CD14+ Mono" --out benchmarks/results/uncertainty
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k_seurat_2000hvg.h5ad")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--held-out", nargs="+", default=["B", "NK", "CD14+ Mono"])
    parser.add_argument(
        "--models",
        type=json.loads,
        # the novelty score depends on the training cells only (the same for every model); the
        # transformer pair differs in the head only: softmax vs Bayesian (init_sigma 0.1)
        default={
            "linear": {},
            "transformer": {},
            "transformer_bayesian": {"model": "transformer", "head": "bayesian"},
        },
        help="JSON {name: config} as for cellformer.bench.parse_models",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/uncertainty")
    args = parser.parse_args()

    import pandas as pd

    from cellformer import bench, datasets

    adata = datasets.load(args.data)
    frames = []
    for cell_type in args.held_out:
        print(f"holding out {cell_type!r} ...", flush=True)
        frames.append(
            bench.holdout_class(adata, args.labels_key, cell_type, args.models, seed=args.seed)
        )
    results = pd.concat(frames, ignore_index=True)
    pd.set_option("display.width", 200)
    columns = ["macro_f1", "ece", "nll", "auroc"]
    print(results.pivot_table(index=["model", "score"], columns="held_out", values="auroc"))
    summary = results.groupby(["model", "score"])[columns].mean()
    print("\nmean over held-out types:")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"args": vars(args), "results": results.to_dict(orient="records")}
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2, default=str))
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
