"""Coarse Cell Ontology answers on PBMC3k, 5-fold: correct answers against fine labels kept.

Labels are mapped to CL terms (the table of the annotate tutorial); a LinearClassifier is
trained per fold (a validation tenth for its thresholds) and predicts the held-out fold with
``ontology=True`` at several confidence thresholds (mass 0.9). For each threshold: the share of
cells that keep a fine label, ontology-aware accuracy (the answer is the truth's term or an
ancestor), exact accuracy and the mean depth of the answers; the plain fine predictions are
the first row. Prints a table and writes JSON.

    python benchmarks/ontology.py --out benchmarks/results/ontology
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PBMC3K_TERMS = {
    "Naive CD4 T": "CL:0000895",
    "Memory CD4 T": "CL:0000897",
    "CD14+ Mono": "CL:0001054",
    "B": "CL:0000236",
    "CD8 T": "CL:0000625",
    "FCGR3A+ Mono": "CL:0002396",
    "NK": "CL:0000623",
    "DC": "CL:0000451",
    "Platelet": "CL:0000233",
}
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k_seurat_2000hvg.h5ad")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/ontology")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    import cellformer as cf
    from cellformer._utils import quiet_training

    adata = cf.datasets.load(args.data)
    ontology = cf.pp.cell_ontology()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    rows = []
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    for fold, (train, test) in enumerate(folds.split(np.zeros(len(y)), y)):
        reference, query = adata[train].copy(), adata[test].copy()
        with quiet_training():
            cf.model.LinearClassifier.setup_anndata(reference, labels_key="cell_type")
            model = cf.model.LinearClassifier(reference)
            model.train(enable_progress_bar=False, validation_size=0.1, seed=0)
        model.set_label_ontology(PBMC3K_TERMS)
        probs = model.predict(query, soft=True, key_prefix=None).to_numpy()
        fine = np.asarray(model.classes, dtype=object)[probs.argmax(1)]
        score = cf.pp.ontology_scores(y[test], fine, PBMC3K_TERMS, ontology)
        rows.append({"fold": fold, "threshold": "fine only", "fine_share": 1.0, **score})
        for threshold in THRESHOLDS:
            answers, terms = model._coarse(probs, None, threshold, 0.9)
            score = cf.pp.ontology_scores(
                y[test], [t or "Unknown" for t in terms], PBMC3K_TERMS, ontology
            )
            kept = float(np.mean([a in PBMC3K_TERMS for a in answers]))
            rows.append({"fold": fold, "threshold": threshold, "fine_share": kept, **score})
    table = pd.DataFrame(rows).groupby("threshold", sort=False).mean(numeric_only=True)
    table = table.drop(columns="fold").round(3)
    print(table.to_string())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "ontology": ontology.version,
        "per_fold": rows,
        "mean": table.reset_index().to_dict("records"),
    }
    (out / "ontology.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
