"""datasets.sctab against a small local SOMA experiment built from an AnnData."""

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from cellformer import bench, datasets

tiledbsoma_io = pytest.importorskip("tiledbsoma.io")


#: A small Cell Ontology: "T cell" and "neuron" lie 8 terms below the root (native cells),
#: "blood cell" 3 (too coarse for scTab), "cultured cell" is not a native cell.
OBO = """format-version: 1.2
ontology: cl

[Term]
id: CL:0000000
name: cell

[Term]
id: CL:0000003
name: native cell
is_a: CL:0000000 ! cell

[Term]
id: CL:0000010
name: cultured cell
is_a: CL:0000000 ! cell
{chain}
[Term]
id: CL:0000081
name: blood cell
is_a: CL:1000001 ! level 1

[Term]
id: CL:0000084
name: T cell
is_a: CL:1000006 ! level 6
is_a: CL:0000081 ! blood cell

[Term]
id: CL:0000540
name: neuron
is_a: CL:1000006 ! level 6

[Term]
id: CL:9999999
name: obsolete cell
is_obsolete: true

[Typedef]
id: part_of
name: part of
""".format(
    chain="".join(
        f"\n[Term]\nid: CL:100000{i}\nname: level {i}\nis_a: "
        + ("CL:0000003 ! native cell" if i == 1 else f"CL:100000{i - 1} ! level {i - 1}")
        + "\n"
        for i in range(1, 7)
    )
)
TERMS = {
    "T cell": "CL:0000084",
    "neuron": "CL:0000540",
    "rare cell": "CL:0000081",
    "blood cell": "CL:0000081",
    "cultured cell": "CL:0000010",
}


@pytest.fixture
def obo(tmp_path):
    path = tmp_path / "cl-simple.obo"
    path.write_text(OBO)
    return path


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
    obs["dataset_id"] = np.where(np.arange(n) < 300, "ds1", "ds2")
    obs["cell_type_ontology_term_id"] = obs["cell_type"].map(TERMS)
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
    adata = datasets.sctab(
        ["brain"], census=uri, min_cells=50, min_samples=3, ontology=None, genes=None
    )
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
        "min_samples": 3,
        "ontology": None,
        "max_cells": 30,
        "genes": ["ENSG00001", "ENSG00004"],
    }
    first = datasets.sctab(["brain", "colon"], census=uri, **kwargs)
    assert first.n_obs == 30 and list(first.var_names) == ["GENE1", "GENE4"]
    only = datasets.sctab(
        ["colon"],
        census=uri,
        cell_types=["neuron"],
        min_cells=50,
        min_samples=3,
        ontology=None,
        genes=None,
    )
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
        datasets.sctab(
            ["heart"],
            census=uri,
            min_cells=50,
            min_samples=3,
            ontology=None,
            genes=None,
            cache=False,
        )


def test_cross_tissue_split_trains_on_gi_tract_and_tests_on_brain(soma):
    uri, _ = soma
    adata = datasets.sctab(
        ["brain", "colon"], census=uri, min_cells=10, min_samples=1, ontology=None, genes=None
    )
    adata.obs.loc[adata.obs.tissue_general == "colon", "cell_type"] = "T cell"  # no neuron in GI
    (fold,) = bench.cross_tissue().split(adata, "cell_type")
    tissue = adata.obs["tissue_general"].to_numpy()
    assert (tissue[fold.train] == "colon").all()
    assert (tissue[np.concatenate([fold.test, fold.novel])] == "brain").all()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    assert set(y[fold.novel]) == {"neuron", "rare cell"}  # unseen in the GI tract: novel
    with pytest.raises(ValueError, match="both"):
        bench.cross_domain("tissue_general", ["brain"], ["brain", "colon"])


def test_cell_ontology_reads_is_a_ancestors_and_skips_obsolete_terms(obo):
    cl = datasets.CellOntology.read(obo)
    assert cl.names["CL:0000084"] == "T cell"
    assert "CL:9999999" not in cl.parents and "part_of" not in cl.parents
    levels = {f"CL:100000{i}" for i in range(1, 7)}
    assert cl.ancestors("CL:0000540") == levels | {"CL:0000003", "CL:0000000"}
    assert cl.ancestors("CL:0000084") == levels | {"CL:0000003", "CL:0000000", "CL:0000081"}
    assert cl.ancestors("CL:0000081") == {"CL:1000001", "CL:0000003", "CL:0000000"}
    empty = obo.with_name("empty.obo")
    empty.write_text("format-version: 1.2\n")
    with pytest.raises(ValueError, match="OBO"):
        datasets.CellOntology.read(empty)


def test_sctab_drops_coarse_and_non_native_cell_types_by_the_ontology(soma, obo):
    from cellformer.datasets._sctab import _keep_cell_types

    uri, _ = soma
    kwargs = {"census": uri, "min_cells": 10, "min_samples": 1, "genes": None, "cache": False}
    everything = datasets.sctab(["brain", "colon"], ontology=None, **kwargs)
    assert "rare cell" in set(everything.obs["cell_type"])
    # "rare cell" is a blood cell: 3 ancestors, fewer than scTab's 8
    deep = datasets.sctab(["brain", "colon"], ontology=obo, **kwargs)
    assert set(deep.obs["cell_type"]) == {"T cell", "neuron"}
    deeper = datasets.sctab(["brain", "colon"], ontology=obo, min_ancestors=9, **kwargs)
    assert set(deeper.obs["cell_type"]) == {"T cell"}  # the neuron has 8
    obs = pd.DataFrame(
        {
            "cell_type": ["cultured cell"] * 5 + ["neuron"] * 5,
            "cell_type_ontology_term_id": ["CL:0000010"] * 5 + ["CL:0000540"] * 5,
            "donor_id": list("abcde") * 2,
            "dataset_id": "ds",
        }
    )
    cl = datasets.CellOntology.read(obo)
    assert _keep_cell_types(obs, 5, 5, cl, min_ancestors=0) == ["neuron"]  # not a native cell
    assert _keep_cell_types(obs, 5, 5, None) == ["cultured cell", "neuron"]


def test_sctab_counts_donor_dataset_samples_as_scTab_does(soma):
    uri, source = soma
    # neurons come from 8 donors in each of 2 datasets (16 samples), T cells from 8 donors in one
    kwargs = {"census": uri, "min_cells": 10, "ontology": None, "genes": None, "cache": False}
    adata = datasets.sctab(["brain", "colon"], min_samples=9, **kwargs)
    assert set(adata.obs["cell_type"]) == {"neuron"}
    adata = datasets.sctab(["brain", "colon"], min_samples=8, **kwargs)
    assert set(adata.obs["cell_type"]) == {"T cell", "neuron"}


def test_sctab_downloads_the_cell_ontology_and_scTab_genes_once(soma, monkeypatch):
    import io

    from test_datasets import LocalServer, register

    uri, _ = soma
    features = io.BytesIO()
    pd.DataFrame({"gene_names": ["GENE9", "GENE2", "GENE5", "NOT_IN_CENSUS"]}).to_parquet(features)
    files = {"cl-simple.obo": OBO.encode(), "features.parquet": features.getvalue()}
    kwargs = {"census": uri, "min_cells": 10, "min_samples": 1, "cache": False}
    with LocalServer(files) as server:
        register(monkeypatch, "cl-simple.obo", f"{server.url}/cl-simple.obo", None)
        register(monkeypatch, "sctab_features.parquet", f"{server.url}/features.parquet", None)
        adata = datasets.sctab(["brain"], **kwargs)  # ontology="cl", genes="sctab": defaults
        assert set(adata.obs["cell_type"]) == {"T cell", "neuron"}
        assert list(adata.var_names) == ["GENE2", "GENE5", "GENE9"]  # in the census's order
        datasets.sctab(["colon"], **kwargs)
        assert server.requests["cl-simple.obo"] == server.requests["features.parquet"] == 1
    with pytest.raises(ValueError, match="sctab"):
        datasets.sctab(["brain"], genes="protein_coding", **kwargs)


def test_sctab_selects_genes_by_symbol_or_ensembl_id(soma):
    uri, _ = soma
    kwargs = {"census": uri, "min_cells": 10, "min_samples": 1, "ontology": None, "cache": False}
    by_symbol = datasets.sctab(["brain"], genes=["GENE3", "GENE7"], **kwargs)
    by_id = datasets.sctab(["brain"], genes=["ENSG00003", "ENSG00007"], **kwargs)
    assert list(by_symbol.var_names) == list(by_id.var_names) == ["GENE3", "GENE7"]
