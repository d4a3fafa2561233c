"""Run by tests/test_pretrain.py under torchrun: pretrain with 2-process DDP, save each rank's weights."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_counts

from cellformer.model import pretrain

if __name__ == "__main__":
    out = Path(sys.argv[1])
    adata = make_counts(n_cells=150, n_genes=30)
    encoder = pretrain(
        adata,
        d_model=16,
        n_heads=2,
        max_epochs=2,
        batch_size=16,
        chunk_size=64,
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        enable_progress_bar=False,
    )
    rank = int(os.environ.get("RANK", 0))
    torch.save({"state": encoder.state_dict, "history": encoder.history}, out / f"rank{rank}.pt")
