"""Tokenisation throughput (cells/s) of each tokenizer preset on real data.

Fits each preset's statistics (gene medians, HVGs) on the cells, then times
``Tokenizer.transform`` on the sparse count matrix (chunks of 4,096 cells, vectorised with torch;
no Python loop over cells). The best of ``--repeats`` runs is reported. Prints a table and writes
JSON.

    python benchmarks/tokenizer_throughput.py --data ../shared/data/pbmc3k_seurat_2000hvg.h5ad \\
        --out benchmarks/results/tokenizers.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_DATA = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_seurat_2000hvg.h5ad"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="h5ad with counts in X")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--out", default="benchmarks/results/tokenizers.json")
    args = parser.parse_args()

    import anndata as ad
    import scipy.sparse as sp
    import torch
    from rich.console import Console
    from rich.table import Table

    from cellformer import pp
    from cellformer.tokenizers import PRESETS, Tokenizer

    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    X = sp.csr_matrix(adata.X)
    kind = pp.check_expression(adata)
    rows = []
    for preset in PRESETS:
        tok = Tokenizer(adata.var_names, preset)
        start = time.perf_counter()
        tok.fit(X, kind)
        fit_s = time.perf_counter() - start
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = tok.transform(X, kind)
            times.append(time.perf_counter() - start)
        real = ~out["padding_mask"]
        rows.append(
            {
                "preset": preset,
                "cells_per_s": adata.n_obs / min(times),
                "fit_s": fit_s,
                "tokens_per_cell_mean": float(real.sum(1).mean()),
                "sequence_length": int(out["ids"].shape[1]),
                "vocabulary": int(tok.gene_mask.sum()),
            }
        )
    table = Table(
        title=f"Tokenisation of {adata.n_obs} cells × {adata.n_vars} genes "
        f"({Path(args.data).name}, {args.threads} threads, best of {args.repeats})",
        title_justify="left",
    )
    for col in rows[0]:
        table.add_column(col, justify="left" if col == "preset" else "right")
    for r in rows:
        table.add_row(
            r["preset"],
            f"{r['cells_per_s']:,.0f}",
            f"{r['fit_s']:.2f}",
            f"{r['tokens_per_cell_mean']:.0f}",
            str(r["sequence_length"]),
            str(r["vocabulary"]),
        )
    Console(width=120).print(table)
    out_path = Path(args.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"data": str(args.data), "n_cells": adata.n_obs, "threads": args.threads}
    out_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
