"""Is the latent space meaningful? 5-nearest-neighbour label transfer on held-out cells.

For each data set and seed: a stratified 70/30 split; the held-out cells' labels are hidden
("Unknown") and every model trains on the AnnData with both parts, as a user would. Reported per
model: accuracy and macro-F1 of the predictions on the held-out cells, accuracy of 5-NN label
transfer from the training cells' latent (``get_latent_representation``) to the held-out cells',
fit seconds. The target of issue 19 (#13): the latent 5-NN accuracy of the default and the pure
transformer at least 0.9x the linear model's accuracy.

    python benchmarks/latent.py --out benchmarks/results/latent
    python benchmarks/latent.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad --seeds 0 1 2

Variants are given as JSON: ``--variant 'pure={"linear_path": false}'`` (model arguments) or
``--variant 'long={"tokenizer": {"preset": "default", "train_max_length": null}}'``; a ``"train"``
key holds ``train()`` arguments.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def score(model_name, model, fit_s, y, data_name, seed, adata, train, test) -> dict:
    """Predictions and latent 5-NN transfer of one trained model on the held-out cells."""
    from sklearn.metrics import f1_score
    from sklearn.neighbors import KNeighborsClassifier

    pred = model.predict(adata, key_prefix=None)[test]
    z = model.get_latent_representation(adata, key_prefix=None)
    knn = KNeighborsClassifier(5).fit(z[train], y[train])
    return {
        "data": data_name,
        "seed": seed,
        "model": model_name,
        "accuracy": float((pred == y[test]).mean()),
        "macro_f1": float(f1_score(y[test], pred, average="macro")),
        "latent_5nn_accuracy": float((knn.predict(z[test]) == y[test]).mean()),
        "fit_s": round(fit_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", nargs="*", default=["embedded"])
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variant", action="append", default=[])
    parser.add_argument("--out", default="benchmarks/results/latent")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split

    import cellformer as cf
    from cellformer._utils import quiet_training

    variants = {"default": {}, "pure": {"linear_path": False}}
    for text in args.variant:
        name, _, spec = text.partition("=")
        variants[name] = json.loads(spec)
    rows = []
    for path in args.data:
        data = cf.datasets.load(None if path == "embedded" else path)
        name = "pbmc68k_reduced" if path == "embedded" else Path(path).stem
        y = data.obs[args.labels_key].astype(str).to_numpy()
        for seed in args.seeds:
            train, test = train_test_split(
                np.arange(data.n_obs), test_size=0.3, random_state=seed, stratify=y
            )
            adata = data.copy()
            adata.obs["_label"] = np.where(np.isin(np.arange(data.n_obs), train), y, "Unknown")

            def record(model_name, model, fit_s, split=(y, name, seed, adata, train, test)):
                rows.append(score(model_name, model, fit_s, *split))
                print(json.dumps(rows[-1]), flush=True)

            cf.model.LinearClassifier.setup_anndata(adata, labels_key="_label")
            start = time.perf_counter()
            linear = cf.model.LinearClassifier(adata)
            with quiet_training():
                linear.train(seed=seed, enable_progress_bar=False)
            record("linear", linear, time.perf_counter() - start)
            for variant, options in variants.items():
                options = dict(options)
                train_kwargs = options.pop("train", {})
                cf.model.CellTransformer.setup_anndata(adata, labels_key="_label")
                start = time.perf_counter()
                model = cf.model.CellTransformer(adata, seed=seed, **options)
                with quiet_training():
                    model.train(seed=seed, enable_progress_bar=False, **train_kwargs)
                record(variant, model, time.perf_counter() - start)

    table = pd.DataFrame(rows)
    summary = table.groupby(["data", "model"], sort=False)[
        ["accuracy", "macro_f1", "latent_5nn_accuracy", "fit_s"]
    ].mean()
    linear_accuracy = summary.xs("linear", level="model")["accuracy"]
    summary["latent_vs_linear_accuracy"] = (
        summary["latent_5nn_accuracy"]
        / linear_accuracy.reindex(summary.index.get_level_values("data")).to_numpy()
    )
    print(summary.round(3).to_string())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "runs.csv", index=False)
    (out / "summary.json").write_text(summary.reset_index().to_json(orient="records", indent=2))


if __name__ == "__main__":
    main()
