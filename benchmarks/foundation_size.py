"""A Geneformer V2-104M-sized checkpoint on the CPU: embedding and fine-tuning real cells.

Builds a random-weight checkpoint in Geneformer's published format with the V2-104M
architecture (BERT, 12 layers, hidden size 768, 12 heads, feed-forward 3,072, input size 4,096,
a 20,275-token dictionary: about 104 M parameters), its dictionaries keyed by Ensembl IDs, and
loads it for real PBMC3k cells named by *symbols* (mapped by cellformer). Then it measures the
zero-shot embedding and one epoch of fine-tuning (the last ``--trainable-layers`` layers and
the head): seconds per 100 cells and the process's peak resident memory after each stage.
Random weights know nothing: this measures cost, not accuracy. Prints a table and writes JSON.

    python benchmarks/foundation_size.py --cells 200 --out benchmarks/results/foundation_size
"""

from __future__ import annotations

import argparse
import json
import pickle
import resource
import tempfile
import time
from pathlib import Path

#: Geneformer V2-104M's published architecture (its config.json).
V2_104M = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 4096,
    "hidden_act": "relu",
    "vocab_size": 20275,
    "pad_token_id": 0,
}


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def write_checkpoint(path: Path, gene_ids: list[str], seed: int = 0) -> int:
    import numpy as np
    import torch
    import transformers

    specials = ["<pad>", "<mask>", "<cls>", "<eos>"]
    tokens = {t: i for i, t in enumerate(specials)}
    for gene in gene_ids:
        tokens[gene] = len(tokens)
    while len(tokens) < V2_104M["vocab_size"]:  # the rest of the published vocabulary
        tokens[f"ENSG9{len(tokens):010d}"] = len(tokens)
    rng = np.random.default_rng(seed)
    medians = {g: float(rng.lognormal(0.0, 1.0)) for g in tokens if g not in specials}
    torch.manual_seed(seed)
    model = transformers.BertForMaskedLM(transformers.BertConfig(**V2_104M))
    n_params = sum(p.numel() for p in model.bert.parameters())
    model.save_pretrained(path)
    with open(path / "token_dictionary.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(path / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump(medians, f)
    return n_params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data/pbmc3k_seurat_2000hvg.h5ad")
    parser.add_argument("--cells", type=int, default=200, help="cells embedded and fine-tuned")
    parser.add_argument("--trainable-layers", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default="benchmarks/results/foundation_size")
    args = parser.parse_args()

    import numpy as np
    import torch

    import cellformer as cf

    adata = cf.datasets.load(args.data)
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, args.cells, replace=False))].copy()
    adata.obs["n_counts"] = adata.obs["nCount_RNA"].astype(float)
    ids = cf.pp.map_gene_names(adata.var_names, to="ensembl")
    rows: dict = {"cells": args.cells, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        start = time.perf_counter()
        rows["parameters"] = write_checkpoint(path, list(ids.names))
        rows["write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model = cf.model.CellTransformer.from_pretrained(
            path, adata, labels_key="cell_type", trainable_layers=args.trainable_layers
        )
        rows["load_s"] = time.perf_counter() - start
        rows["rss_after_load_gb"] = peak_rss_gb()
        lengths = (np.asarray((adata.X > 0).sum(axis=1)).ravel()).clip(max=4094) + 2
        rows["mean_tokens_per_cell"] = float(lengths.mean())
        start = time.perf_counter()
        z = model.get_latent_representation(adata, key_prefix=None)
        rows["embed_s_per_100_cells"] = (time.perf_counter() - start) / args.cells * 100
        rows["rss_after_embed_gb"] = peak_rss_gb()
        rows["embedding_dim"] = int(z.shape[1])
        start = time.perf_counter()
        model.train(
            max_epochs=1,
            batch_size=args.batch_size,
            validation_size=0.0,
            enable_progress_bar=False,
            novelty=False,
        )
        rows["fine_tune_s_per_100_cells"] = (time.perf_counter() - start) / args.cells * 100
        rows["rss_after_fine_tune_gb"] = peak_rss_gb()
    width = max(map(len, rows))
    for key, value in rows.items():
        print(
            f"{key:<{width}}  {value:.3g}"
            if isinstance(value, float)
            else f"{key:<{width}}  {value}"
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "foundation_size.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
