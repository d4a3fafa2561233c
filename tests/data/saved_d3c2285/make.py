"""Write the models and outputs of ``tests/test_layout.py``'s check of the prediction refactor.

Run at commit d3c2285 (before predict became a pipeline, issue 40), from the repository root:
``python tests/data/saved_d3c2285/make.py``. A linear model and a small transformer (Bayesian
head without a linear path, novelty and Unknown thresholds fit) on pbmc68k_reduced's first 300 cells × 80 genes; what
``predict`` wrote then (every obs column and the latent) is kept beside them in ``outputs.npz``.
"""

from pathlib import Path

import numpy as np
import torch

import cellformer as cf

HERE = Path(__file__).parent


def query():
    adata = cf.datasets.pbmc68k_reduced()[:300, :80].copy()
    adata.obs["groups"] = np.arange(adata.n_obs) % 7  # fixed clusters to vote in
    return adata


def outputs(model, adata, name: str) -> dict:
    torch.manual_seed(0)
    model.predict(
        adata,
        key_prefix=name,
        reject_unknown=True,
        mc_samples=4,
        latent=True,
        majority_voting=True,
        over_clustering="groups",
    )
    torch.manual_seed(0)
    probs, std = model.predict(adata, soft=True, return_std=True, key_prefix=None, mc_samples=4)
    out = {f"{name}:probs": probs.to_numpy(), f"{name}:std": std.to_numpy()}
    out[f"{name}:latent"] = adata.obsm[f"X_{name}"]
    for column in adata.obs.columns:
        if column.startswith(name + "_"):
            values = adata.obs[column]
            out[f"{name}:obs:{column}"] = np.asarray(values.astype(str), dtype=str) if (
                values.dtype == "category" or values.dtype == bool
            ) else values.to_numpy()
    return out


def main() -> None:
    adata = query()
    cf.model.LinearClassifier.setup_anndata(adata, labels_key="bulk_labels")
    linear = cf.model.LinearClassifier(adata)
    linear.train(seed=0, validation_size=0.1)
    linear.save(HERE / "linear", overwrite=True)

    cf.model.CellTransformer.setup_anndata(adata, labels_key="bulk_labels")
    transformer = cf.model.CellTransformer(
        adata, d_model=16, n_layers=1, n_heads=2, linear_path=False
    )
    transformer.train(max_epochs=20, seed=0, enable_progress_bar=False)
    transformer.to_bayesian()
    transformer.train(max_epochs=1, seed=0, enable_progress_bar=False)
    transformer.save(HERE / "transformer", overwrite=True)

    result = {}
    for name in ("linear", "transformer"):
        cls = cf.model.LinearClassifier if name == "linear" else cf.model.CellTransformer
        result |= outputs(cls.load(HERE / name), query(), name)
    np.savez_compressed(HERE / "outputs.npz", **result)


if __name__ == "__main__":
    main()
