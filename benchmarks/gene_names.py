"""A saved symbol-trained model on queries named another way: Ensembl IDs, mouse symbols.

For each data set: a LinearClassifier trained on a stratified half (seeded), saved and loaded,
annotates the other half as it is (symbols) and renamed with the pinned tables (GENCODE v44,
Ensembl 105 orthologs): Ensembl IDs with version suffixes (genes without an ID keep their
symbol, as files whose annotation lacks one do), the same with those genes dropped, and mouse
symbols. Reports the coverage of the model's genes, the share of the symbol query's labels each
renamed query gets, and accuracy. Prints a table and writes JSON.

    python benchmarks/gene_names.py --out benchmarks/results/gene_names
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path


def renamed(cf, query, to, species=None, keep_unmapped=False, version=""):
    import numpy as np
    import pandas as pd

    mapping = cf.pp.map_gene_names(query.var_names, to=to, species=species)
    if keep_unmapped:
        names = np.asarray(query.var_names, dtype=object).copy()
        names[mapping.query_idx] = [f"{n}{version}" for n in mapping.names]
        out = query.copy()
        out.var_names = pd.Index(names.astype(str))
        return out
    out = query[:, mapping.query_idx].copy()
    out.var_names = pd.Index([f"{n}{version}" for n in mapping.names])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data",
        nargs="+",
        default=["pbmc68k_reduced", "../shared/data/pbmc3k_seurat_2000hvg.h5ad"],
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="benchmarks/results/gene_names")
    args = parser.parse_args()

    import numpy as np
    from sklearn.model_selection import train_test_split

    import cellformer as cf

    logging.getLogger("cellformer").setLevel(logging.ERROR)
    rows = []
    for name in args.data:
        data = cf.datasets.load(None if name == "pbmc68k_reduced" else name)
        labels = data.obs["cell_type"].astype(str).to_numpy()
        for seed in args.seeds:
            tr, te = train_test_split(
                np.arange(data.n_obs), test_size=0.5, random_state=seed, stratify=labels
            )
            ref, query = data[np.sort(tr)].copy(), data[np.sort(te)].copy()
            cf.model.LinearClassifier.setup_anndata(ref, labels_key="cell_type")
            model = cf.model.LinearClassifier(ref)
            model.train(enable_progress_bar=False, seed=seed)
            with tempfile.TemporaryDirectory() as tmp:
                model.save(tmp, overwrite=True)
                model = cf.model.LinearClassifier.load(tmp)
            truth = query.obs["cell_type"].astype(str).to_numpy()
            base = model.predict(query.copy(), key_prefix=None)
            queries = {
                "symbols (as trained)": query.copy(),
                "Ensembl IDs .N, unmapped genes kept": renamed(
                    cf, query, "ensembl", keep_unmapped=True, version=".5"
                ),
                "Ensembl IDs .N, unmapped genes dropped": renamed(
                    cf, query, "ensembl", version=".5"
                ),
                "mouse symbols": renamed(cf, query, "symbol", species="mouse"),
            }
            for kind, q in queries.items():
                q.var.drop(columns=q.var.columns, inplace=True)  # only the tables can map it
                coverage = model._resolve(q, None, min_gene_coverage=0.0).alignment.coverage
                pred = model.predict(q, key_prefix=None, min_gene_coverage=0.0)
                rows.append(
                    {
                        "data": Path(name).stem,
                        "seed": seed,
                        "query": kind,
                        "coverage": float(coverage),
                        "same_labels": float(np.mean(pred == base)),
                        "accuracy": float(np.mean(pred == truth)),
                    }
                )
    import pandas as pd

    table = (
        pd.DataFrame(rows)
        .groupby(["data", "query"], sort=False)[["coverage", "same_labels", "accuracy"]]
        .mean()
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gene_names.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
