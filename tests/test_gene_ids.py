"""Gene identifiers across naming schemes: Ensembl IDs (versioned or not), symbols, mouse."""

import logging

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import make_counts, shared_file, train_linear

import cellformer as cf
from cellformer import InputError, _core
from cellformer._core import gene_tables as tables
from cellformer.pp import GeneTableError

pytest.importorskip("celltypist")  # the pinned gene tables ship in its package


@pytest.fixture(scope="module")
def pbmc3k_split():
    """PBMC3k counts (real, 2,000 symbols): a reference half and a query half."""
    data = ad.read_h5ad(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    order = np.random.default_rng(0).permutation(data.n_obs)
    return data[order[:1300]].copy(), data[order[1300:]].copy()


@pytest.fixture(scope="module")
def symbol_model(pbmc3k_split):
    ref, _ = pbmc3k_split
    return train_linear(ref.copy(), library_size_key="nCount_RNA")


def _ensembl_named(adata, version=".7"):
    """The query as an Ensembl-ID file: IDs (versioned) where GENCODE v44 has one; the other
    genes keep their names (as in files whose annotation lacks an ID for them). No symbol
    column, so only the tables can map it."""
    mapping = cf.pp.map_gene_names(adata.var_names, to="ensembl")
    names = np.asarray(adata.var_names, dtype=object).copy()
    names[mapping.query_idx] = [f"{i}{version}" for i in mapping.names]
    out = adata.copy()
    out.var_names = pd.Index(names.astype(str))
    return out


def test_gene_namespace_of_real_names(pbmc68k):
    assert tables.gene_namespace(pbmc68k.var_names) == ("human", "symbol")
    assert tables.gene_namespace(["ENSG00000163736.1", "ENSG00000000003"]) == ("human", "ensembl")
    assert tables.gene_namespace(["ENSMUSG00000000001", "ENSMUSG00000000028"]) == (
        "mouse",
        "ensembl",
    )
    mouse = ad.read_h5ad(shared_file("mouse_immune_actinn.h5ad"), backed="r")
    assert tables.gene_namespace(mouse.var_names) == ("mouse", "symbol")


def test_strip_version_leaves_symbols_alone():
    out = tables.strip_version(["ENSG00000163736.12", "ENSG00000000003", "HLA-A.1", "CD3E"])
    assert list(out) == ["ENSG00000163736", "ENSG00000000003", "HLA-A.1", "CD3E"]


def test_map_genes_round_trip_and_leaves_input_alone(pbmc68k):
    before = pbmc68k.var_names.copy()
    ids = cf.pp.map_genes(pbmc68k, to="ensembl")
    assert pbmc68k.var_names.equals(before)  # the user's AnnData is not changed
    assert ids.n_vars > 0.8 * pbmc68k.n_vars
    assert all(n.startswith("ENSG") for n in ids.var_names)
    # the expression follows its gene
    col = ids.var["original_name"].iloc[3]
    np.testing.assert_array_equal(ids.obs_vector(ids.var_names[3]), pbmc68k.obs_vector(col))
    back = cf.pp.map_genes(ids, to="symbol")
    assert (back.var_names == back.var["original_name"].map(ids.var["original_name"])).all()


def test_symbols_with_several_ids_are_ambiguous_unless_the_target_decides():
    g = tables.gencode()
    several = g[g["symbol"].duplicated(keep=False)].sort_values("symbol")
    symbol = several["symbol"].iloc[0]
    its_ids = list(several.loc[several["symbol"] == symbol, "ensembl"])
    names = [symbol, "CD3E", "MS4A1"]
    free = cf.pp.map_gene_names(names, to="ensembl")
    assert free.n_ambiguous == 1 and symbol in free.ambiguous
    assert free.n_mapped == 2 and symbol not in free.as_frame(names)["source"].tolist()
    # a model that has one of its IDs settles it
    ids = g.set_index("symbol")["ensembl"]
    target = [its_ids[0], ids["CD3E"], ids["MS4A1"]]
    bound = cf.pp.map_gene_names(names, target=target)
    assert bound.n_ambiguous == 0 and bound.n_mapped == 3
    assert "ambiguous" in bound.summary() and "GENCODE v44" in bound.summary()


def test_a_user_table_with_several_targets_is_an_error():
    table = pd.DataFrame({"from": ["A", "A", "B"], "to": ["X", "Y", "Z"]})
    with pytest.raises(GeneTableError, match="ambiguous.*A → X/Y.*one row per name"):
        cf.pp.map_gene_names(["A", "B"], table=table)
    with pytest.raises(InputError, match="two columns"):
        cf.pp.map_gene_names(["A"], table=pd.DataFrame({"a": [1], "b": [2], "c": [3]}))
    out = cf.pp.map_gene_names(["A", "B", "C"], table={"A": "X", "B": "Y"})
    assert out.n_mapped == 2 and out.n_unmatched == 1


def test_ensembl_query_on_a_symbol_model(pbmc3k_split, symbol_model, caplog):
    _, query = pbmc3k_split
    symbols = symbol_model.predict(query.copy(), key_prefix=None)
    ens = _ensembl_named(query)
    assert tables.gene_namespace(ens.var_names) == ("human", "ensembl")
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        labels = symbol_model.predict(ens, key_prefix=None)
    line = [r.getMessage() for r in caplog.records if "Mapped human Ensembl IDs" in r.getMessage()]
    assert line and "ambiguous" in line[0] and "GENCODE v44" in line[0]
    assert np.mean(labels == symbols) >= 0.99
    # unversioned IDs too, and the latent space
    z = symbol_model.get_latent_representation(_ensembl_named(query, version=""), key_prefix=None)
    z0 = symbol_model.get_latent_representation(query.copy(), key_prefix=None)
    assert np.corrcoef(z.ravel(), z0.ravel())[0, 1] > 0.99


def test_mouse_query_on_a_human_model(pbmc3k_split, symbol_model, caplog):
    _, query = pbmc3k_split
    symbols = symbol_model.predict(query.copy(), key_prefix=None)
    mouse = cf.pp.map_genes(query, to="symbol", species="mouse")
    del mouse.var["original_name"]  # only the ortholog table can map it back
    assert tables.gene_namespace(mouse.var_names) == ("mouse", "symbol")
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        labels = symbol_model.predict(mouse, key_prefix=None)
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "Mapped mouse symbols to human symbols" in text and "orthologs" in text
    assert "Query covers" in text  # the coverage of the model's genes
    assert np.mean(labels == symbols) >= 0.85


def test_mouse_symbols_map_onto_human_ones():
    alignment = _core.align_genes(
        ["CD3E", "CD19", "MS4A1", "NKG7"], ["Cd3e", "Cd19", "Ms4a1", "Nkg7"]
    )
    assert alignment.coverage == 1.0 and alignment.mapping is not None
    np.testing.assert_array_equal(alignment.query_idx, [0, 1, 2, 3])


def test_gene_overlap_reports_the_mapping(pbmc3k_split):
    ref, query = pbmc3k_split
    ens = _ensembl_named(query)
    overlap = cf.pp.gene_overlap(ref, ens)
    assert overlap.mapping is not None and overlap.n_shared == ref.n_vars
    assert "Mapped human Ensembl IDs to human symbols" in overlap.summary()
    frame = overlap.mapping.as_frame(ens.var_names)
    assert frame["source"].str.startswith("ENSG").all()
    with pytest.raises(InputError, match="AnnData or a list of gene names.*sc.read_h5ad"):
        cf.pp.gene_overlap(ref, "query.h5ad")


def test_annotate_an_ensembl_query_with_a_symbol_reference(pbmc3k_split):
    ref, query = pbmc3k_split
    ens = _ensembl_named(query)
    cf.tl.annotate(ens, reference=ref.copy(), labels_key="cell_type", progress=False)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    predicted = ens.obs["cellformer_prediction"].astype(str).to_numpy()
    assert np.mean(predicted == truth) > 0.85
    assert ens.var_names[0].startswith("ENSG")  # the query's names are left as they were


def test_a_var_column_with_the_models_names_is_used():
    data = make_counts()
    model = train_linear(data.copy())
    query = data.copy()
    query.var["symbol"] = query.var_names.astype(str)
    query.var_names = [f"ENSG{i:011d}" for i in range(query.n_vars)]
    labels = model.predict(query, key_prefix=None)
    np.testing.assert_array_equal(labels, model.predict(data.copy(), key_prefix=None))


def test_without_the_tables_the_error_says_what_to_install(monkeypatch, pbmc68k):
    monkeypatch.setattr(tables.importlib.util, "find_spec", lambda name: None)
    tables.clear_cache()
    try:
        with pytest.raises(GeneTableError, match=r"cellformer\[celltypist\]"):
            cf.pp.map_gene_names(pbmc68k.var_names, to="ensembl")
        ids = [f"ENSG{i:011d}" for i in range(pbmc68k.n_vars)]
        with pytest.raises(InputError, match=r"Only 0.0%.*cellformer\[celltypist\]"):
            _core.align_genes(pbmc68k.var_names, ids)
    finally:
        tables.clear_cache()


@pytest.mark.parametrize(
    "rename",
    [lambda g: f"{g}__chr1", lambda g: f"GRCh38_{g}", lambda g: f"{g}|ENSG0000000000{len(g)}"],
    ids=["suffix", "genome prefix", "symbol|id"],
)
def test_compound_gene_names_map_by_their_part(symbol_model, pbmc3k_split, rename):
    """CEL-seq2 tables (INS__chr11), Cell Ranger multi-genome names (GRCh38_INS), SYMBOL|ID."""
    _, query = pbmc3k_split
    plain = symbol_model.predict(query.copy(), key_prefix=None)
    compound = query.copy()
    compound.var_names = [rename(g) for g in compound.var_names]
    np.testing.assert_array_equal(symbol_model.predict(compound, key_prefix=None), plain)
    overlap = cf.pp.gene_overlap(symbol_model.adata.var_names, compound.var_names)
    assert len(overlap.shared) == query.n_vars


def test_a_compound_name_part_shared_by_two_genes_maps_neither():
    """A barnyard query: hg19_CD4 and mm10_CD4 both give CD4, which is then not used."""
    pos, mapping, _ = _core.match_genes(
        ["CD4", "CD8A", "MS4A1"], ["hg19_CD4", "mm10_CD4", "hg19_CD8A", "hg19_MS4A1"]
    )
    assert pos.tolist() == [-1, 2, 3]
    assert "CD4" not in set(mapping.names)


@pytest.mark.parametrize("naming", ["half IDs, half symbols", "lower-case IDs"])
def test_queries_named_partly_by_ids_or_by_lower_case_ids_map_gene_by_gene(
    pbmc3k_split, symbol_model, naming
):
    _, query = pbmc3k_split
    expected = symbol_model.predict(query.copy(), soft=True, key_prefix=None)
    ids = _ensembl_named(query, version="")
    names = np.asarray(ids.var_names, dtype=object)
    if naming == "lower-case IDs":
        names = np.array([n.lower() if n.startswith("ENSG") else n for n in names], dtype=object)
    else:  # every other gene keeps its symbol
        names[1::2] = np.asarray(query.var_names)[1::2]
    renamed = query.copy()
    renamed.var_names = pd.Index(names.astype(str))
    assert renamed.var_names.str.upper().str.startswith("ENSG").mean() > 0.3
    probs = symbol_model.predict(renamed, soft=True, key_prefix=None)
    np.testing.assert_allclose(probs.to_numpy(), expected.to_numpy(), atol=1e-6)
