"""Coarse Cell Ontology answers on PBMC3k, 5-fold: correct answers against fine labels kept.

Labels are mapped to CL terms (the table of the annotate tutorial); a LinearClassifier (with
``--model transformer`` the default CellTransformer) is trained per fold (a validation tenth
for its thresholds) and predicts the held-out fold with ``ontology=True`` at several
confidence thresholds (mass 0.9). For each threshold: the share of cells that keep a fine
label, ontology-aware accuracy (the answer is the truth's term or an ancestor), exact accuracy
and the mean depth of the answers; the plain fine predictions are the first row. Per
threshold, which truth → answer pairs the wrong fine labels are. Then PBMC3k →
pbmc68k_reduced (:func:`cross`): the Unknown rate of ``reject_unknown=True`` and how many
Unknown cells get an ontology-correct coarse answer. Prints a table and writes JSON.

    python benchmarks/ontology.py --out benchmarks/results/ontology
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
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
#: pbmc68k_reduced's FACS labels as CL terms (the annotate tutorial's table)
PBMC68K_TERMS = {
    "CD19+ B": "CL:0000236",
    "CD14+ Monocyte": "CL:0001054",
    "CD56+ NK": "CL:0000623",
    "Dendritic": "CL:0000451",
    "CD8+ Cytotoxic T": "CL:0000794",
    "CD8+/CD45RA+ Naive Cytotoxic": "CL:0000900",
    "CD4+/CD25 T Reg": "CL:0000815",
    "CD4+/CD45RO+ Memory": "CL:0000897",
    "CD4+/CD45RA+/CD25- Naive T": "CL:0000895",
    "CD34+": "CL:0008001",
}
THRESHOLDS = (0.4, 0.5, 0.6, 0.7, 0.8)


def cross(data: str, ontology) -> dict:
    """PBMC3k → pbmc68k_reduced (another lab, FACS labels): Unknown cells vs coarse answers.

    The linear model on the shared genes with ``reject_unknown=True`` (thresholds from a
    validation tenth) and ``ontology=True`` at the same confidence threshold: how many cells
    are Unknown, and how many of them get an ontology-correct coarse answer instead (truth in
    CL terms; pbmc68k's CD34+ cells have no PBMC3k counterpart).
    """
    import numpy as np

    import cellformer as cf

    reference = cf.datasets.load(data)
    query = cf.datasets.pbmc68k_reduced()
    truth = query.obs.pop("cell_type").astype(str).to_numpy()
    cf.tl.annotate(
        query,
        reference=reference,
        labels_key="cell_type",
        genes="shared",
        reject_unknown=True,
        ontology=True,
        label_ontology=PBMC3K_TERMS,
        progress=False,
    )
    obs = query.obs
    unknown = obs["cellformer_prediction"].astype(str).to_numpy() == "Unknown"
    coarse = obs["cellformer_prediction_coarse_ontology_term_id"].astype(str).to_numpy()
    correct = np.array(
        [ontology.is_ancestor(c, PBMC68K_TERMS[t]) if c.startswith("CL:") else False
         for c, t in zip(coarse, truth, strict=True)]
    )  # fmt: skip
    return {
        "cells": int(len(truth)),
        "unknown_rate": float(unknown.mean()),
        "unknown_with_correct_coarse": float((unknown & correct).sum() / max(unknown.sum(), 1)),
        "unknown_rate_after_coarse": float((unknown & ~correct).mean()),
        "coarse_ontology_accuracy": float(correct.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k_seurat_2000hvg.h5ad")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", default="benchmarks/results/ontology")
    parser.add_argument(
        "--model", choices=["linear", "transformer"], default="linear", help="model of the folds"
    )
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    from sklearn.model_selection import StratifiedKFold

    import cellformer as cf
    from cellformer._utils import quiet_training
    from cellformer.model.base._ontology import coarse_answers_of

    adata = cf.datasets.load(args.data)
    ontology = cf.pp.cell_ontology()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    rows = []
    wrong_fine = {t: Counter() for t in THRESHOLDS}  # errors among cells that keep a fine label
    folds = StratifiedKFold(args.folds, shuffle=True, random_state=0)
    for fold, (train, test) in enumerate(folds.split(np.zeros(len(y)), y)):
        reference, query = adata[train].copy(), adata[test].copy()
        with quiet_training():
            cls = {"linear": cf.model.LinearClassifier, "transformer": cf.model.CellTransformer}
            cls[args.model].setup_anndata(reference, labels_key="cell_type")
            model = cls[args.model](reference)
            model.train(enable_progress_bar=False, validation_size=0.1, seed=0)
        model.set_label_ontology(PBMC3K_TERMS)
        probs = model.predict(query, soft=True, key_prefix=None).to_numpy()
        fine = np.asarray(model.classes, dtype=object)[probs.argmax(1)]
        score = cf.pp.ontology_scores(y[test], fine, PBMC3K_TERMS, ontology)
        rows.append({"fold": fold, "threshold": "fine only", "fine_share": 1.0, **score})
        for threshold in THRESHOLDS:
            answers, terms = coarse_answers_of(model, probs, threshold, 0.9)
            score = cf.pp.ontology_scores(
                y[test], [t or "Unknown" for t in terms], PBMC3K_TERMS, ontology
            )
            is_fine = np.array([a in PBMC3K_TERMS for a in answers])
            kept = float(is_fine.mean())
            for truth, answer in zip(y[test][is_fine], np.asarray(answers)[is_fine], strict=True):
                if truth != answer:
                    wrong_fine[threshold][f"{truth} -> {answer}"] += 1
            rows.append({"fold": fold, "threshold": threshold, "fine_share": kept, **score})
    table = pd.DataFrame(rows).groupby("threshold", sort=False).mean(numeric_only=True)
    table = table.drop(columns="fold").round(3)
    print(table.to_string())
    print("Wrong fine labels (all folds), the most frequent truth -> answer pairs:")
    for threshold, pairs in wrong_fine.items():
        total = sum(pairs.values())
        top = ", ".join(f"{pair} {n}" for pair, n in pairs.most_common(3))
        print(f"  threshold {threshold}: {total} cells; {top}")
    shift = cross(args.data, ontology)
    print("PBMC3k -> pbmc68k_reduced:", {k: round(v, 3) for k, v in shift.items()})
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "ontology": ontology.version,
        "model": args.model,
        "per_fold": rows,
        "mean": table.reset_index().to_dict("records"),
        "wrong_fine_labels": {str(t): dict(c.most_common()) for t, c in wrong_fine.items()},
        "pbmc3k_to_pbmc68k": shift,
    }
    (out / "ontology.json").write_text(json.dumps(payload, indent=2, default=str))


if __name__ == "__main__":
    main()
