"""Every gene a token: CellTransformer with the scBERT preset and sparse / linear attention.

Trains ``CellTransformer(tokenizer="scbert", attention=...)`` — every gene of the data a token,
zeros included — on a stratified 80% of the cells and scores the held-out 20% beside the linear
model on the same split. Each configuration runs in its own process so that its peak memory
(resident set size) is its own. Prints a table and writes JSON.

    python benchmarks/long_sequences.py --attention knn performer \\
        --data ../shared/data/mouse_immune_actinn.h5ad --out benchmarks/results/long_sequences
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def run_one(args: argparse.Namespace) -> dict:
    """Train and score one model in this process."""
    import numpy as np
    from sklearn.model_selection import train_test_split

    from cellformer import bench, datasets

    adata = datasets.load(args.data)
    labels = adata.obs[args.labels_key].astype(str).to_numpy()
    train_idx, test_idx = train_test_split(
        np.arange(adata.n_obs), test_size=args.test_size, random_state=args.seed, stratify=labels
    )
    train, test = adata[np.sort(train_idx)].copy(), adata[np.sort(test_idx)].copy()
    if args.model == "linear":
        config: dict = {"model": "linear"}
    else:
        config = {
            "model": "transformer",
            "tokenizer": args.tokenizer,
            "attention": args.model,
            "d_model": args.d_model,
            "n_layers": args.n_layers,
            "train": {"max_epochs": args.max_epochs, "batch_size": args.batch_size},
        }
        if args.options:
            config["attention_options"] = json.loads(args.options)
    fit = bench.MODELS[config.pop("model")]
    start = time.perf_counter()
    model = fit(train, args.labels_key, None, args.seed, config)
    train_s = time.perf_counter() - start
    epochs = None
    history = getattr(model, "history", None) or {}
    if "train_loss" in history:
        epochs = len(history["train_loss"])
    start = time.perf_counter()
    pred = model.predict(test, key_prefix=None)
    predict_s = time.perf_counter() - start
    scores = bench.classification_metrics(test.obs[args.labels_key].astype(str), pred)
    n_tokens = None
    if args.model != "linear":
        n_tokens = int(model.tokenize(test[:1])["ids"].shape[1])
    return {
        "model": args.model,
        "tokens_per_cell": n_tokens,
        **scores,
        "epochs": epochs,
        "train_s": train_s,
        "s_per_epoch": train_s / epochs if epochs else None,
        "best_validation_macro_f1": (
            float(history["validation_macro_f1"].max().iloc[0])
            if "validation_macro_f1" in history
            else None
        ),
        "predict_cells_per_s": test.n_obs / predict_s,
        "n_params": bench.n_parameters(model),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/mouse_immune_actinn.h5ad")
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--attention", nargs="+", default=["knn", "performer"])
    parser.add_argument("--tokenizer", default="scbert")
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--n-layers", type=int, default=1)
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--options", default=None, help="JSON attention_options")
    parser.add_argument("--test-size", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/long_sequences")
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.model is not None:
        print(json.dumps(run_one(args)))
        return

    import pandas as pd

    rows = []
    for model in ["linear", *args.attention]:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--model", model]
        print(f"running {model} ...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            rows.append({"model": model, "error": done.stderr.strip().splitlines()[-1]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    table = pd.DataFrame(rows).set_index("model")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    from pathlib import Path

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))
    print(f"wrote {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
