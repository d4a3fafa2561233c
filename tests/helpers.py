"""Test helpers: synthetic data and paths to the real data in ../shared/data."""

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"{path} is not available (real data from ../shared/data)")
    return path


def make_counts(
    n_cells: int = 240, n_genes: int = 60, n_types: int = 3, seed: int = 0
) -> ad.AnnData:
    """Synthetic counts where each cell type over-expresses its own block of genes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat([f"type_{i}" for i in range(n_types)], n_cells // n_types)
    rates = np.full((n_cells, n_genes), 1.0)
    block = n_genes // n_types
    for i in range(n_types):
        rates[labels == f"type_{i}", i * block : (i + 1) * block] = 6.0
    X = rng.poisson(rates * rng.uniform(0.5, 1.5, size=(n_cells, 1))).astype(np.float32)
    X[:, 0] += 1  # no empty cells
    adata = ad.AnnData(
        X=sp.csr_matrix(X),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical(labels)}, index=[f"cell{i}" for i in range(n_cells)]
        ),
        var=pd.DataFrame(index=[f"GENE{j}" for j in range(n_genes)]),
    )
    adata.layers["counts"] = adata.X.copy()
    return adata


def train_linear(adata: ad.AnnData, labels_key: str = "cell_type", **setup):
    """A LinearClassifier set up on ``obs[labels_key]`` and trained (seed 0)."""
    from cellformer.model import LinearClassifier

    LinearClassifier.setup_anndata(adata, labels_key=labels_key, **setup)
    model = LinearClassifier(adata)
    model.train(enable_progress_bar=False, seed=0)
    return model


def assert_token_table(table: dict, adata) -> None:
    """``tokenize()``'s one return type, whatever the model (see CellformerModel.tokenize)."""
    assert {"ids", "tokens", "values", "padding_mask", "obs_names"} <= set(table)
    shape = table["ids"].shape
    assert shape[0] == adata.n_obs and np.issubdtype(table["ids"].dtype, np.integer)
    for key in ("tokens", "values", "padding_mask"):
        assert table[key].shape == shape, key
    assert table["padding_mask"].dtype == bool
    np.testing.assert_array_equal(table["obs_names"], np.asarray(adata.obs_names))
    assert not table["padding_mask"].all(axis=1).any(), "a cell with only padding"


def fill_hf_cache(cache, repo: str, files: dict[str, bytes]):
    """A Hugging Face cache as `hf download` leaves it: refs/main and one snapshot."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)
