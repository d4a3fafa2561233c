"""datasets.sctab against a small local SOMA experiment built from an AnnData."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellformer import bench, datasets

tiledbsoma_io = pytest.importorskip("tiledbsoma.io")


@pytest.fixture
def soma(tmp_path, monkeypatch):
    """A census-like experiment: 2 tissues, 3 cell types, donors, assays, primary flags."""
    monkeypatch.setenv("CELLFORMER_DATA_DIR", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    n = 400
    obs = pd.DataFrame(
        {
            "cell_type": np.repeat(["T cell", "neuron", "rare cell"], [200, 180, 20]),
            "tissue_general": np.tile(["brain", "colon"], n // 2),
            "donor_id": [f"d{i % 8}" for i in range(n)],
            "assay": np.where(np.arange(n) % 10 == 5, "Smart-seq2", "10x 3' v3"),
            "is_primary_data": np.arange(n) % 10 != 3,
        },
        index=[f"cell{i}" for i in range(n)],
    )
    obs.loc[obs.cell_type == "rare cell", "donor_id"] = "d0"  # one donor only
    var = pd.DataFrame(
        {
            "feature_id": [f"ENSG{i:05d}" for i in range(12)],
            "feature_name": [f"GENE{i}" for i in range(12)],
        },  # fmt: skip
        index=[f"ENSG{i:05d}" for i in range(12)],
    )
    counts = sp.csr_matrix(rng.poisson(1.0, (n, 12)).astype(np.float32))
    source = ad.AnnData(counts, obs=obs, var=var)
    uri = str(tmp_path / "soma")
    tiledbsoma_io.from_anndata(uri, source, measurement_name="RNA", X_layer_name="raw")
    return uri, source


def test_sctab_applies_the_filters_and_returns_counts_with_metadata(soma):
    uri, source = soma
    adata = datasets.sctab(["brain"], census=uri, min_cells=50, min_donors=3)
    obs = source.obs
    expected = obs[
        obs.is_primary_data
        & (obs.assay == "10x 3' v3")
        & (obs.tissue_general == "brain")
        & obs.cell_type.isin(["T cell", "neuron"])  # the rare type has one donor
    ]
    assert adata.n_obs == len(expected)
    assert set(adata.obs["cell_type"]) == {"T cell", "neuron"}
    assert set(adata.obs["tissue_general"]) == {"brain"}
    assert {"donor_id", "assay"} <= set(adata.obs)
    assert list(adata.var_names[:2]) == ["GENE0", "GENE1"] and "feature_id" in adata.var
    # the counts are the source's, cell for cell
    rows = [int(i) for i in adata.obs_names]  # soma_joinid = row of the source
    np.testing.assert_array_equal(adata.X.toarray(), source.X[rows].toarray())


def test_sctab_caches_subsamples_and_selects_genes_and_types(soma, tmp_path):
    import shutil

    uri, _ = soma
    kwargs = {
        "min_cells": 50,
        "min_donors": 3,
        "max_cells": 30,
        "genes": ["ENSG00001", "ENSG00004"],
    }
    first = datasets.sctab(["brain", "colon"], census=uri, **kwargs)
    assert first.n_obs == 30 and list(first.var_names) == ["GENE1", "GENE4"]
    only = datasets.sctab(["colon"], census=uri, cell_types=["neuron"], min_cells=50, min_donors=3)
    assert set(only.obs["cell_type"]) == {"neuron"}
    shutil.rmtree(uri)  # the census is gone: the same query comes from the cache
    again = datasets.sctab(["colon", "brain"], census=uri, **kwargs)
    assert list(again.obs_names) == list(first.obs_names)
    assert list((tmp_path / "cache" / "sctab").glob("*.h5ad"))
    with pytest.raises(ValueError, match="tissues"):
        datasets.sctab([], census=uri)


def test_sctab_explains_an_unknown_tissue(soma):
    uri, _ = soma
    with pytest.raises(ValueError, match="tissue_general"):
        datasets.sctab(["heart"], census=uri, min_cells=50, min_donors=3, cache=False)


def test_cross_tissue_split_trains_on_gi_tract_and_tests_on_brain(soma):
    uri, _ = soma
    adata = datasets.sctab(["brain", "colon"], census=uri, min_cells=10, min_donors=1)
    adata.obs.loc[adata.obs.tissue_general == "colon", "cell_type"] = "T cell"  # no neuron in GI
    (fold,) = bench.cross_tissue().split(adata, "cell_type")
    tissue = adata.obs["tissue_general"].to_numpy()
    assert (tissue[fold.train] == "colon").all()
    assert (tissue[np.concatenate([fold.test, fold.novel])] == "brain").all()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    assert set(y[fold.novel]) == {"neuron", "rare cell"}  # unseen in the GI tract: novel
    with pytest.raises(ValueError, match="both"):
        bench.cross_domain("tissue_general", ["brain"], ["brain", "colon"])
