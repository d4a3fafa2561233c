"""Run by tests/test_pretrain.py under torchrun: 2-process DDP pretraining, then supervised
training (linear path included); each rank saves its weights."""

import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import make_counts

from cellformer.model import CellTransformer, pretrain

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
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(max_epochs=2, batch_size=16, accelerator="cpu", devices=2, strategy="ddp",
                enable_progress_bar=False)  # fmt: skip
    history = {key: value.to_numpy().ravel().tolist() for key, value in model.history.items()}
    torch.save(
        {
            "state": encoder.state_dict,
            "history": encoder.history,
            "classifier": model.module.state_dict(),
            "classifier_history": history,
        },
        out / f"rank{rank}.pt",
    )
