"""Quickstart: annotate PBMCs with the linear baseline and look at its embedding.

Run with ``python tutorials/quickstart.py``; figures are written next to the working directory.
(Executed notebooks for the Sphinx site come with the documentation issue.)
"""

import scanpy as sc

import cellformer as cf

adata = cf.datasets.pbmc68k_reduced()
cf.model.LinearClassifier.setup_anndata(adata, labels_key="cell_type")
model = cf.model.LinearClassifier(adata)
model.train()
print(model)

model.predict(adata)
model.get_latent_representation(adata)
sc.pp.neighbors(adata, use_rep="X_cellformer")
sc.tl.umap(adata)
sc.pl.umap(
    adata,
    color=["cell_type", "cellformer_prediction", "cellformer_confidence"],
    save="_quickstart.png",
    show=False,
)
print("Wrote figures/umap_quickstart.png")
