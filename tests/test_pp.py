import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
from helpers import make_counts

from cellformer import InputError, _core, pp


def lognorm(adata):
    out = adata.copy()
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


def test_detects_counts_and_lognorm(counts_adata):
    assert pp.check_expression(counts_adata) == "counts"
    assert pp.check_expression(lognorm(counts_adata)) == "lognorm"
    assert pp.check_expression(counts_adata, layer="counts", require="counts") == "counts"


def test_log_data_where_counts_are_needed(counts_adata):
    with pytest.raises(InputError, match="raw counts are needed.*layer="):
        pp.check_expression(lognorm(counts_adata), require="counts")


def test_counts_where_lognorm_is_needed(counts_adata):
    with pytest.raises(InputError, match="log1p"):
        pp.check_expression(counts_adata, require="lognorm")


def test_normalised_but_not_logged(counts_adata):
    a = counts_adata.copy()
    sc.pp.normalize_total(a, target_sum=1e4)
    with pytest.raises(InputError, match="not log-transformed.*sc.pp.log1p"):
        pp.check_expression(a)


def test_negative_values_name_scaling(counts_adata):
    a = lognorm(counts_adata)
    sc.pp.scale(a)
    with pytest.raises(InputError, match="negative values.*scaled"):
        pp.check_expression(a)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(counts_adata, bad):
    a = counts_adata.copy()
    X = a.X.toarray()
    X[3, 5] = bad
    a.X = sp.csr_matrix(X)
    with pytest.raises(InputError, match="1 NaN or infinite"):
        pp.check_expression(a)


def test_empty_cells_are_named(counts_adata):
    a = counts_adata.copy()
    X = a.X.toarray()
    X[7] = 0
    a.X = sp.csr_matrix(X)
    with pytest.raises(InputError, match=r"1 cell\(s\) have no expression.*cell7.*filter_cells"):
        pp.check_expression(a)


def test_unknown_layer(counts_adata):
    with pytest.raises(InputError, match="'raw_counts' is not in adata.layers.*counts"):
        pp.check_expression(counts_adata, layer="raw_counts")


def test_duplicated_gene_names(counts_adata):
    a = counts_adata.copy()
    names = list(a.var_names)
    names[1] = names[0]
    a.var_names = names
    with pytest.raises(InputError, match="more than once.*var_names_make_unique"):
        _core.check_var_names(a)


def test_missing_labels_key_suggests_close_match(counts_adata):
    with pytest.raises(InputError, match="not a column.*Did you mean 'cell_type'"):
        _core.check_labels(counts_adata, "celltype")


def test_single_class_rejected(counts_adata):
    a = counts_adata[counts_adata.obs.cell_type == "type_0"].copy()
    with pytest.raises(InputError, match="at least 2 cell types"):
        _core.check_labels(a, "cell_type")


def test_unlabelled_cells_do_not_count_as_a_class(counts_adata):
    a = counts_adata.copy()
    a.obs["cell_type"] = np.where(a.obs.cell_type == "type_0", "type_0", "Unknown")
    with pytest.raises(InputError, match="at least 2"):
        _core.check_labels(a, "cell_type", unlabeled_category="Unknown")


def test_align_genes_reorders_and_marks_missing_genes_unmeasured(counts_adata):
    model_genes = counts_adata.var_names
    query = counts_adata[:, list(model_genes[::-1][:-5])].copy()  # reversed, 5 genes missing
    al = _core.align_genes(model_genes, query.var_names)
    assert al.coverage == pytest.approx(55 / 60)
    assert set(al.missing) == set(model_genes[:5])
    ((_, block),) = list(
        _core.iter_lognorm_chunks(query.X, "counts", alignment=al, chunk_size=10_000)
    )
    ref = pp.lognormalize(counts_adata.X).toarray()
    # present genes: same values up to the library size (computed over the query's own genes)
    lib_ref = counts_adata.X.sum(1).A1
    lib_q = query.X.sum(1).A1
    expected = np.log1p(np.expm1(ref[:, 5:]) * (lib_ref / lib_q)[:, None])
    np.testing.assert_allclose(block[:, 5:], expected, rtol=1e-4, atol=1e-5)
    assert np.isnan(block[:, :5]).all()  # unmeasured, not measured zeros


def test_low_overlap_names_id_types():
    model = [f"ENSG{i:011d}" for i in range(100)]
    query = [f"GENE{i}" for i in range(100)]
    with pytest.raises(InputError, match="Only 0.0%.*Ensembl IDs.*human-style symbols.*var_names"):
        _core.align_genes(model, query)


def test_low_overlap_case_hint_for_species(monkeypatch):
    # without the gene tables (with them, the orthologs are mapped: tests/test_gene_ids.py)
    from cellformer._core import gene_tables as _gene_tables

    monkeypatch.setattr(_gene_tables.importlib.util, "find_spec", lambda name: None)
    _gene_tables.clear_cache()
    model = ["CD3E", "CD19", "MS4A1", "LYZ", "NKG7", "GNLY"]
    query = ["Cd3e", "Cd19", "Ms4a1", "Lyz", "Nkg7", "Gnly"]
    with pytest.raises(InputError, match="case is ignored.*species.*cellformer\\[celltypist\\]"):
        _core.align_genes(model, query)


def test_gene_id_kind():
    assert pp.gene_id_kind(["ENSG00000121410", "ENSG00000175899.3"]) == "Ensembl IDs"
    assert pp.gene_id_kind(["CD3E", "MS4A1", "LYZ"]).startswith("human")
    assert pp.gene_id_kind(["Cd3e", "Ms4a1", "Lyz2"]).startswith("mouse")


def test_scaler_streams_over_training_cells_only(counts_adata):
    idx = np.arange(0, 240, 2)
    mean, std = _core.fit_scaler(counts_adata.X, "counts", idx, chunk_size=17)
    dense = pp.lognormalize(counts_adata.X).toarray()[idx]
    np.testing.assert_allclose(mean, dense.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(std, dense.std(0), rtol=1e-3, atol=1e-5)


def test_validate_rejects_non_anndata():
    with pytest.raises(InputError, match="Expected an AnnData"):
        pp.validate_anndata(np.zeros((3, 3)))


def test_backed_data_is_read_in_chunks(tmp_path):
    a = make_counts()
    a.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    assert pp.check_expression(backed) == "counts"
    mean, _ = _core.fit_scaler(backed.X, "counts", np.arange(50), chunk_size=16)
    np.testing.assert_allclose(
        mean, pp.lognormalize(a.X[:50]).toarray().mean(0), rtol=1e-4, atol=1e-5
    )


def test_chunks_follow_the_given_cell_order(counts_adata):
    order = np.random.default_rng(0).permutation(counts_adata.n_obs)  # all cells, shuffled
    idx, block = next(_core.iter_lognorm_chunks(counts_adata.X, "counts", order, chunk_size=10_000))
    np.testing.assert_array_equal(idx, order)
    np.testing.assert_allclose(block, pp.lognormalize(counts_adata.X).toarray()[order], rtol=1e-6)


def test_a_read_only_backed_file_is_checked_once(tmp_path, monkeypatch):
    import anndata as ad

    from cellformer._core import checks as _checks

    make_counts(n_cells=60, n_genes=10).write_h5ad(tmp_path / "q.h5ad")
    calls = []
    real = _checks._check_expression

    def counted(*args):
        calls.append(args[1:])
        return real(*args)

    monkeypatch.setattr(_checks, "_check_expression", counted)
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    assert pp.check_expression(backed) == pp.check_expression(backed) == "counts"
    assert len(calls) == 1  # the file cannot change while it is open read-only
    pp.check_expression(backed, allow_empty_cells=True)  # other arguments: checked again
    pp.check_expression(backed[:20])  # a view of some cells: checked again
    in_memory = backed.to_memory()
    pp.check_expression(in_memory)
    pp.check_expression(in_memory)  # in memory it may have changed: always checked
    assert len(calls) == 5
