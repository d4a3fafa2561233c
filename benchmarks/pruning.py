"""Structured pruning: accuracy, size and inference speed before and after.

Trains a CellTransformer on a stratified 80% of the cells, measures held-out macro-F1 and
inference cells/s, prunes FFN units and heads in steps with fine-tuning
(:meth:`cellformer.model.CellTransformer.prune`), and measures again in the same process.
Speed is the median of ``--reps`` predictions of the test cells. Prints the pruning report and
the before/after table; writes JSON.

    python benchmarks/pruning.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --out benchmarks/results/pruning
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k_seurat_2000hvg.h5ad")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--model", type=json.loads, default={}, help="JSON CellTransformer kwargs")
    parser.add_argument("--ffn-sparsity", type=float, default=0.5)
    parser.add_argument("--head-sparsity", type=float, default=0.5)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--fine-tune-epochs", type=int, default=3)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--score", default="magnitude", choices=["magnitude", "taylor"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/pruning")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split

    from cellformer import bench, datasets
    from cellformer._utils import quiet_training
    from cellformer.model import CellTransformer

    adata = datasets.load(args.data)
    y = adata.obs[args.labels_key].astype(str).to_numpy()
    train_idx, test_idx = train_test_split(
        np.arange(adata.n_obs), test_size=0.2, random_state=args.seed, stratify=y
    )
    train, test = adata[np.sort(train_idx)].copy(), adata[np.sort(test_idx)].copy()
    y_test = test.obs[args.labels_key].astype(str).to_numpy()

    def measure(model) -> dict:
        times = []
        for _ in range(args.reps):
            start = time.perf_counter()
            pred = model.predict(test, key_prefix=None)
            times.append(time.perf_counter() - start)
        return {
            **bench.classification_metrics(y_test, pred),
            "n_params": bench.n_parameters(model),
            "predict_cells_per_s": test.n_obs / float(np.median(times)),
        }

    CellTransformer.setup_anndata(train, labels_key=args.labels_key)
    model = CellTransformer(train, **args.model)
    with quiet_training():
        model.train(seed=args.seed, enable_progress_bar=False)
        before = measure(model)
        report = model.prune(
            ffn_sparsity=args.ffn_sparsity,
            head_sparsity=args.head_sparsity,
            steps=args.steps,
            fine_tune_epochs=args.fine_tune_epochs,
            tolerance=args.tolerance,
            score=args.score,
            seed=args.seed,
        )
        after = measure(model)
    pd.set_option("display.width", 200)
    print(report.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    table = pd.DataFrame({"before": before, "after": after}).T
    table.loc["ratio after/before"] = table.loc["after"] / table.loc["before"]
    print(
        table[["accuracy", "macro_f1", "n_params", "predict_cells_per_s"]].to_string(
            float_format=lambda v: f"{v:.4g}"
        )
    )
    print(
        f"macro-F1 change {after['macro_f1'] - before['macro_f1']:+.4f}; inference speed-up "
        f"{after['predict_cells_per_s'] / before['predict_cells_per_s']:.2f}x; parameters "
        f"{after['n_params'] / before['n_params']:.2f}x"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "args": vars(args),
        "report": report.to_dict(orient="records"),
        "before": before,
        "after": after,
    }
    out.with_suffix(".json").write_text(json.dumps(payload, indent=2))
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
