import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from helpers import make_counts, shared_file, train_linear

from cellformer import InputError
from cellformer.bench import cross_validate, summarize
from cellformer.model import LinearClassifier

BASELINES = ["linear", "sklearn_logreg"]
#: The same objective on both sides (C fixed): the full-batch fit must match scikit-learn's.
FIXED_C = {"linear": {"C": 0.1}, "sklearn_logreg": {"C": 0.1}}


trained = train_linear


def test_predict_writes_obs_and_obsm(counts_adata):
    model = trained(counts_adata)
    labels = model.predict()
    assert labels.shape == (counts_adata.n_obs,)
    assert counts_adata.obs["cellformer_prediction"].dtype == "category"
    assert list(counts_adata.obs["cellformer_prediction"].cat.categories) == model.classes
    conf = counts_adata.obs["cellformer_confidence"].to_numpy()
    assert np.all((conf > 0) & (conf <= 1))
    z = model.get_latent_representation()
    assert z.shape == (counts_adata.n_obs, 3)
    np.testing.assert_array_equal(counts_adata.obsm["X_cellformer"], z)
    assert (labels == counts_adata.obs["cell_type"].to_numpy()).mean() > 0.95


def test_soft_predictions_are_a_probability_frame(counts_adata):
    model = trained(counts_adata)
    probs = model.predict(soft=True, key_prefix=None)
    assert isinstance(probs, pd.DataFrame)
    assert list(probs.index) == list(counts_adata.obs_names)
    assert list(probs.columns) == ["type_0", "type_1", "type_2"]
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert "cellformer_prediction" not in counts_adata.obs


def test_key_prefix_keeps_models_side_by_side(counts_adata):
    model = trained(counts_adata)
    model.predict(key_prefix="lin_a")
    model.get_latent_representation(key_prefix="lin_a")
    assert {"lin_a_prediction", "lin_a_confidence"} <= set(counts_adata.obs)
    assert "X_lin_a" in counts_adata.obsm


def test_save_load_round_trip_identical(counts_adata, tmp_path):
    model = trained(counts_adata)
    before = model.predict(soft=True, key_prefix=None)
    z_before = model.get_latent_representation(key_prefix=None)
    model.save(tmp_path / "model")
    query = counts_adata.copy()
    del query.obs["cell_type"]  # a query has no labels
    loaded = LinearClassifier.load(tmp_path / "model", adata=query)
    assert loaded.is_trained_
    assert loaded.classes == model.classes
    after = loaded.predict(soft=True)
    np.testing.assert_array_equal(after.to_numpy(), before.to_numpy())
    np.testing.assert_array_equal(loaded.get_latent_representation(key_prefix=None), z_before)
    assert "cellformer_prediction" in query.obs
    assert "LinearClassifier(60 genes → 3 cell types" in repr(loaded)


def test_query_with_other_gene_order_and_missing_genes(counts_adata, tmp_path, caplog):
    model = trained(counts_adata, layer="counts")
    model.save(tmp_path / "m")
    shuffled = counts_adata[:, counts_adata.var_names[::-1]].copy()
    loaded = LinearClassifier.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.predict(shuffled, soft=True).to_numpy(),
        model.predict(soft=True, key_prefix=None).to_numpy(),
        rtol=1e-5,
    )
    partial = counts_adata[:, counts_adata.var_names[3:]].copy()
    with caplog.at_level("WARNING", logger="cellformer"):
        labels = loaded.predict(partial)
    assert "95.0% of the model's 60 genes" in caplog.text
    assert (labels == counts_adata.obs["cell_type"].to_numpy()).mean() > 0.9


def test_query_with_too_few_genes_is_rejected(counts_adata):
    model = trained(counts_adata)
    query = counts_adata[:, :10].copy()
    with pytest.raises(InputError, match="Only 16.7% of the model's 60 genes"):
        model.predict(query)


def test_counts_and_lognorm_inputs_agree(counts_adata):
    lognorm = counts_adata.copy()
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    m_counts = trained(counts_adata.copy(), layer="counts")
    m_log = trained(lognorm)
    assert m_counts.input_kind_ == "counts" and m_log.input_kind_ == "lognorm"
    p_counts = m_counts.predict(counts_adata, soft=True, key_prefix=None).to_numpy()
    p_log = m_log.predict(lognorm, soft=True, key_prefix=None).to_numpy()
    np.testing.assert_allclose(p_counts, p_log, atol=1e-3)
    # a model trained on counts reads a log-normalised query the same way
    np.testing.assert_allclose(
        m_counts.predict(lognorm, soft=True, key_prefix=None).to_numpy(), p_counts, atol=1e-4
    )


def test_same_seed_same_model(counts_adata):
    a = trained(counts_adata.copy()).predict(soft=True, key_prefix=None)
    b = trained(counts_adata.copy()).predict(soft=True, key_prefix=None)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())


def test_unlabelled_cells_are_not_trained_on(counts_adata):
    a = counts_adata.copy()
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.iloc[:10, a.obs.columns.get_loc("cell_type")] = "Unknown"
    model = trained(a)
    assert sorted(model.classes) == ["type_0", "type_1", "type_2"]
    assert "Unknown" not in set(model.predict())


def test_setup_errors(counts_adata):
    with pytest.raises(InputError, match="labels_key is required"):
        LinearClassifier.setup_anndata(counts_adata)
    with pytest.raises(InputError, match="Did you mean 'cell_type'"):
        LinearClassifier.setup_anndata(counts_adata, labels_key="celltypes")
    nan_labels = counts_adata.copy()
    nan_labels.obs["cell_type"] = nan_labels.obs["cell_type"].astype(object)
    nan_labels.obs.iloc[0, 0] = np.nan
    with pytest.raises(InputError, match="1 missing values"):
        LinearClassifier.setup_anndata(nan_labels, labels_key="cell_type")
    with pytest.raises(InputError, match="batch_key='donor'"):
        LinearClassifier.setup_anndata(counts_adata, labels_key="cell_type", batch_key="donor")


def test_backed_query(counts_adata, tmp_path):
    model = trained(counts_adata)
    counts_adata.write_h5ad(tmp_path / "q.h5ad")
    backed = ad.read_h5ad(tmp_path / "q.h5ad", backed="r")
    np.testing.assert_allclose(
        model.predict(backed, soft=True, key_prefix=None, batch_size=50).to_numpy(),
        model.predict(soft=True, key_prefix=None).to_numpy(),
        rtol=1e-5,
    )


@pytest.mark.slow
def test_learns_on_real_pbmc_and_matches_sklearn(pbmc68k):
    """On real PBMCs with FACS labels: far above the majority line, within 0.01 macro-F1 of sklearn."""
    results = cross_validate(pbmc68k, "cell_type", models=FIXED_C, n_folds=5, progress=False)
    summary = summarize(results)
    linear, ref, majority = (summary.loc[m] for m in ("linear", "sklearn_logreg", "majority"))
    assert linear["accuracy_mean"] > majority["accuracy_mean"] + 0.3
    assert linear["macro_f1_mean"] > 0.65
    assert linear["macro_f1_mean"] >= ref["macro_f1_mean"] - 0.01
    assert results["error"].isna().all()


@pytest.mark.slow
def test_pbmc3k_seurat_cv_macro_f1():
    """5-fold CV on the Seurat-annotated PBMC3k (counts of 2,000 genes): macro-F1 >= 0.90."""
    adata = ad.read_h5ad(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    summary = summarize(
        cross_validate(adata, "cell_type", models=FIXED_C, n_folds=5, seed=0, progress=False)
    )
    assert summary.loc["linear", "macro_f1_mean"] >= 0.90
    assert (
        summary.loc["linear", "macro_f1_mean"]
        >= summary.loc["sklearn_logreg", "macro_f1_mean"] - 0.01
    )


@pytest.mark.slow
def test_mouse_all_genes_counts():
    """14,063 mouse genes, counts in X: trains and predicts far above the majority line."""
    adata = ad.read_h5ad(shared_file("mouse_immune_actinn.h5ad"))
    rng = np.random.default_rng(1)
    test = rng.random(adata.n_obs) < 0.25
    model = trained(adata[~test].copy())
    query = adata[test].copy()
    acc = (
        model.predict(query, key_prefix=None) == query.obs["cell_type"].astype(str).to_numpy()
    ).mean()
    majority = query.obs["cell_type"].value_counts(normalize=True).max()
    assert acc > majority + 0.3


def test_make_counts_is_balanced():
    a = make_counts(n_cells=90)
    assert a.obs["cell_type"].value_counts().tolist() == [30, 30, 30]


def test_full_batch_fit_is_scikit_learns_solution(counts_adata):
    """Same objective as LogisticRegression(C, class_weight='balanced'): the same weights."""
    from sklearn.linear_model import LogisticRegression

    LinearClassifier.setup_anndata(counts_adata, labels_key="cell_type")
    model = LinearClassifier(counts_adata, C=0.5)
    model.train(enable_progress_bar=False)
    z = model.module.encode(torch.as_tensor(cf_lognorm(counts_adata), dtype=torch.float32)).numpy()
    ref = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000, tol=1e-10)
    ref.fit(z, counts_adata.obs["cell_type"].astype(str))
    np.testing.assert_allclose(model.module.linear.weight.detach().numpy(), ref.coef_, atol=2e-3)
    assert model.C_ == 0.5 and "C=0.5" in repr(model)


def test_minibatch_path_minimises_the_same_objective(counts_adata):
    LinearClassifier.setup_anndata(counts_adata, labels_key="cell_type")
    full = LinearClassifier(counts_adata, C=1.0)
    full.train(enable_progress_bar=False)
    mini = LinearClassifier(counts_adata, C=1.0)
    mini.train(full_batch=False, max_epochs=150, enable_progress_bar=False)
    p_full = full.predict(soft=True, key_prefix=None).to_numpy()
    p_mini = mini.predict(soft=True, key_prefix=None).to_numpy()
    assert (p_full.argmax(1) == p_mini.argmax(1)).mean() > 0.97
    assert np.abs(p_full - p_mini).mean() < 0.03


def test_C_auto_is_chosen_by_cross_validation_and_saved(counts_adata, tmp_path):
    from cellformer.train import C_GRID

    LinearClassifier.setup_anndata(counts_adata, labels_key="cell_type")
    model = LinearClassifier(counts_adata)  # C="auto"
    model.train(enable_progress_bar=False)
    assert model.C_ in C_GRID and set(model.cv_scores_) == set(C_GRID)
    assert model.cv_scores_[model.C_] == max(model.cv_scores_.values())
    model.save(tmp_path / "m")
    loaded = LinearClassifier.load(tmp_path / "m")
    assert loaded.C_ == model.C_
    with pytest.raises(ValueError, match="positive or 'auto'"):
        LinearClassifier(counts_adata, C="best")


def cf_lognorm(adata):
    X = adata.X.toarray().astype(np.float64)
    return np.log1p(X / X.sum(1, keepdims=True) * 1e4)


def test_linear_model_has_no_tokens():
    adata = make_counts(n_cells=60, n_genes=10)
    LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    with pytest.raises(InputError, match="no tokens"):
        LinearClassifier(adata).tokenize(adata)


def test_predict_writes_the_latent_of_the_same_pass():
    adata = make_counts(n_cells=90, n_genes=20)
    model = train_linear(adata)
    z = model.get_latent_representation(adata, key_prefix=None)
    labels = model.predict(adata, key_prefix="p", latent=True)
    np.testing.assert_allclose(adata.obsm["X_p"], z, rtol=1e-5, atol=1e-5)
    assert list(adata.obs["p_prediction"]) == list(labels)
    rows = [4, 0, 7]
    model.predict(adata, key_prefix="q", latent=True, indices=rows)
    np.testing.assert_allclose(adata.obsm["X_q"][rows], z[rows], rtol=1e-5, atol=1e-5)
    assert np.isnan(adata.obsm["X_q"][1]).all()
    # a user's own obsm key is refused before any obs column is written
    adata.obsm["X_mine"] = np.zeros((adata.n_obs, 2))
    with pytest.raises(InputError, match="did not write"):
        model.predict(adata, key_prefix="mine", latent=True)
    assert "mine_prediction" not in adata.obs
