"""A Geneformer V2-104M- or scGPT-human-sized checkpoint on the CPU: embedding and fine-tuning.

``--model geneformer`` builds a random-weight checkpoint in Geneformer's published format with
the V2-104M architecture (BERT, 12 layers, hidden size 768, 12 heads, feed-forward 3,072, input
size 4,096, a 20,275-token dictionary: about 104 M parameters), its dictionaries keyed by
Ensembl IDs, and loads it for real PBMC3k cells named by *symbols* (mapped by cellformer).
``--model scgpt`` builds one in scGPT's layout (best_model.pt with flash-attention names,
vocab.json, args.json) with the whole-human architecture (12 layers, width 512, 8 heads,
feed-forward 512, a 60,697-token vocabulary of symbols, up to 1,200 tokens). Then it measures the
zero-shot embedding and one epoch of fine-tuning (the last ``--trainable-layers`` layers and
the head): seconds per 100 cells and the process's peak resident memory after each stage.
Random weights know nothing: this measures cost, not accuracy. Prints a table and writes JSON.

    python benchmarks/foundation_size.py --cells 200 --out benchmarks/results/foundation_size
    python benchmarks/foundation_size.py --model scgpt --cells 200
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


#: scGPT whole-human's published architecture (its args.json) and vocabulary size.
SCGPT_HUMAN = {
    "embsize": 512,
    "nheads": 8,
    "d_hid": 512,
    "nlayers": 12,
    "n_layers_cls": 3,
    "dropout": 0.2,
    "pad_token": "<pad>",
    "pad_value": -2,
    "n_bins": 51,
    "max_seq_len": 1200,
    "input_emb_style": "continuous",
}
SCGPT_VOCAB = 60697


def write_scgpt_checkpoint(path: Path, symbols: list[str], seed: int = 0) -> int:
    """Random weights under the names of scGPT's TransformerModel state dict (flash layout)."""
    import torch
    from torch import nn

    vocab = {g: i for i, g in enumerate(symbols)}
    while len(vocab) < SCGPT_VOCAB - 3:  # the rest of the published vocabulary
        vocab[f"GENE{len(vocab)}"] = len(vocab)
    for token in ("<pad>", "<cls>", "<eoc>"):
        vocab[token] = len(vocab)
    torch.manual_seed(seed)
    d, a = SCGPT_HUMAN["embsize"], SCGPT_HUMAN
    state = {"encoder.embedding.weight": torch.randn(len(vocab), d) * 0.1}
    for name, module in {
        "encoder.enc_norm": nn.LayerNorm(d),
        "value_encoder.linear1": nn.Linear(1, d),
        "value_encoder.linear2": nn.Linear(d, d),
        "value_encoder.norm": nn.LayerNorm(d),
    }.items():
        state.update({f"{name}.{k}": v for k, v in module.state_dict().items()})
    for i in range(a["nlayers"]):
        layer = nn.TransformerEncoderLayer(d, a["nheads"], a["d_hid"], batch_first=True)
        for k, v in layer.state_dict().items():
            state[f"transformer_encoder.layers.{i}.{k.replace('in_proj_', 'Wqkv.')}"] = v
    torch.save(state, path / "best_model.pt")
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "args.json").write_text(json.dumps(SCGPT_HUMAN))
    return sum(v.numel() for v in state.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["geneformer", "scgpt"], default="geneformer")
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
    rows: dict = {"model": args.model, "cells": args.cells, "threads": torch.get_num_threads()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        start = time.perf_counter()
        if args.model == "scgpt":
            rows["parameters"] = write_scgpt_checkpoint(path, list(adata.var_names))
            max_tokens, specials = SCGPT_HUMAN["max_seq_len"] - 1, 1
        else:
            ids = cf.pp.map_gene_names(adata.var_names, to="ensembl")
            rows["parameters"] = write_checkpoint(path, list(ids.names))
            max_tokens, specials = V2_104M["max_position_embeddings"] - 2, 2
        rows["write_s"] = time.perf_counter() - start
        start = time.perf_counter()
        model = cf.model.CellTransformer.from_pretrained(
            path, adata, labels_key="cell_type", trainable_layers=args.trainable_layers
        )
        rows["load_s"] = time.perf_counter() - start
        rows["rss_after_load_gb"] = peak_rss_gb()
        lengths = (np.asarray((adata.X > 0).sum(axis=1)).ravel()).clip(max=max_tokens) + specials
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
    name = "foundation_size" if args.model == "geneformer" else f"foundation_size_{args.model}"
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
