"""Does the transformer's latent space separate cell types? UMAP and silhouette on held-out cells.

Trains the default ``CellTransformer`` on 80% of PBMC3k (stratified), embeds the held-out 20% with
``get_latent_representation`` (the encoder's pooled output, trained through its auxiliary
classifier when the model has a linear path), and writes a UMAP coloured by the curated cell type and by the prediction, plus the
silhouette of the cell types in the latent space next to that of 50 PCs of the log-normalised data.

    python benchmarks/latent_umap.py --out benchmarks/results/latent_umap
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_seurat_2000hvg.h5ad"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/latent_umap")
    args = parser.parse_args()

    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    import scanpy as sc
    from sklearn.metrics import f1_score, silhouette_score
    from sklearn.model_selection import train_test_split

    import cellformer as cf
    from cellformer._utils import quiet_training

    adata = ad.read_h5ad(args.data)
    y = adata.obs[args.labels_key].astype(str).to_numpy()
    train_idx, test_idx = train_test_split(
        np.arange(adata.n_obs), test_size=0.2, stratify=y, random_state=args.seed
    )
    train, test = adata[train_idx].copy(), adata[test_idx].copy()
    cf.model.CellTransformer.setup_anndata(train, labels_key=args.labels_key)
    model = cf.model.CellTransformer(train)
    with quiet_training():
        model.train(seed=args.seed, enable_progress_bar=False)
    pred = model.predict(test)
    model.get_latent_representation(test)
    truth = test.obs[args.labels_key].astype(str).to_numpy()
    sil_latent = silhouette_score(test.obsm["X_cellformer"], truth)
    base = test.copy()
    sc.pp.normalize_total(base, target_sum=1e4)
    sc.pp.log1p(base)
    sc.pp.pca(base, n_comps=50)
    sil_pca = silhouette_score(base.obsm["X_pca"], truth)
    sc.pp.neighbors(test, use_rep="X_cellformer", random_state=args.seed)
    sc.tl.umap(test, random_state=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    test.obs["truth"] = test.obs[args.labels_key].astype("category")
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    sc.pl.umap(test, color="truth", ax=axes[0], show=False, title="curated cell type")
    sc.pl.umap(test, color="cellformer_prediction", ax=axes[1], show=False, title="CellTransformer")
    fig.suptitle(
        f"Held-out PBMC3k cells in the CellTransformer latent space "
        f"(silhouette {sil_latent:.2f}; 50 PCs of log data {sil_pca:.2f})"
    )
    fig.tight_layout()
    fig.savefig(out / "umap.png", dpi=110)
    result = {
        "n_test": int(len(test_idx)),
        "macro_f1": float(f1_score(truth, pred, average="macro")),
        "accuracy": float((truth == pred).mean()),
        "silhouette_latent": float(sil_latent),
        "silhouette_pca50_lognorm": float(sil_pca),
    }
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
