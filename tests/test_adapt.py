"""The transformer learns from the query: cf.tl.annotate(..., adapt=True) and --adapt."""

import anndata as ad
import numpy as np
import pytest
from helpers import make_counts

import cellformer as cf
from cellformer import InputError
from cellformer.cli import main
from cellformer.model.base import _adapt


def _pair(seed=0):
    """A reference and a shifted query (other cells, a per-gene scaling, fewer genes)."""
    reference = make_counts(n_cells=180, n_genes=60, seed=seed)
    query = make_counts(n_cells=120, n_genes=60, seed=seed + 1)
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2.0, size=query.n_vars).astype(np.float32)
    query.X = query.X.multiply(scale[None, :]).tocsr()
    query.X.data = np.round(query.X.data)
    query = query[:, 5:].copy()
    return reference, query


def _annotate(reference, query, **kwargs):
    q = query.copy()
    cf.tl.annotate(
        q,
        reference=reference.copy(),
        labels_key="cell_type",
        model="transformer",
        adapt=True,
        max_epochs=2,
        progress=False,
        **kwargs,
    )
    return q


@pytest.mark.slow
def test_adapted_annotation_never_reads_the_querys_labels():
    reference, query = _pair()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    shuffled = query.copy()
    shuffled.obs["cell_type"] = np.random.default_rng(0).permutation(truth)
    without = query.copy()
    del without.obs["cell_type"]
    a = _annotate(reference, query).obs["cellformer_prediction"].astype(str).to_numpy()
    b = _annotate(reference, shuffled).obs["cellformer_prediction"].astype(str).to_numpy()
    c = _annotate(reference, without).obs["cellformer_prediction"].astype(str).to_numpy()
    np.testing.assert_array_equal(a, b)  # also: deterministic under the seed
    np.testing.assert_array_equal(a, c)
    assert np.mean(a == truth) > 0.9


def test_pseudo_labels_are_class_balanced_and_skip_unsure_cells():
    reference, query = _pair()
    data = _adapt.adaptation_data(reference, "cell_type", None, None, query, None, None)
    assert data.n_obs == reference.n_obs + query.n_obs and data.n_vars == reference.n_vars
    is_query = data.obs["cellformer_origin"].to_numpy() == "query"
    assert (data.obs.loc[is_query, _adapt.ADAPT_LABELS] == _adapt.UNLABELLED).all()
    labels, summary = _adapt.pseudo_label(data, rounds=2, share=0.5)
    query_labels = labels[is_query]
    assert summary["pseudo_labelled"] == int((query_labels != _adapt.UNLABELLED).sum())
    assert 0.4 * query.n_obs <= summary["pseudo_labelled"] <= 0.65 * query.n_obs
    assert set(summary["per_class"]) <= set(reference.obs["cell_type"].astype(str))
    np.testing.assert_array_equal(labels[~is_query], reference.obs["cell_type"].astype(str))
    truth = query.obs["cell_type"].astype(str).to_numpy()
    chosen = query_labels != _adapt.UNLABELLED
    assert np.mean(query_labels[chosen] == truth[chosen]) > 0.9


def test_adapted_model_records_the_query_it_saw(tmp_path):
    reference, query = _pair()
    annotated = _annotate(reference, query, save_model=tmp_path / "adapted")
    adapted = annotated.uns["cellformer"]["adapted"]
    assert adapted["n_cells"] == query.n_obs and adapted["n_genes"] == query.n_vars
    assert adapted["fingerprint"] == _adapt.fingerprint(query)
    model = cf.model.CellTransformer.load(str(tmp_path / "adapted"))
    assert model.adapted_to_["fingerprint"] == adapted["fingerprint"]
    assert "Adapted to a query of 120 cells" in (tmp_path / "adapted" / "README.md").read_text()


def test_adapt_needs_a_reference_and_a_transformer(tmp_path, capsys, monkeypatch):
    reference, query = _pair()
    with pytest.raises(InputError, match="model='transformer'"):
        cf.tl.annotate(
            query.copy(), reference=reference, labels_key="cell_type", adapt=True, progress=False
        )
    with pytest.raises(InputError, match="reference=... and labels_key"):
        cf.tl.annotate(query.copy(), model="transformer", adapt=True, progress=False)
    with pytest.raises(InputError, match="genes='shared'"):
        cf.tl.annotate(
            query.copy(),
            reference=reference,
            labels_key="cell_type",
            model="transformer",
            adapt=True,
            genes="all",
        )

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing the query")

    monkeypatch.setattr(cf.model.CellTransformer, "train", no_training)
    other = query.copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="share no gene"):
        cf.tl.annotate(
            other, reference=reference, labels_key="cell_type", model="transformer", adapt=True
        )
    q = tmp_path / "q.h5ad"
    query.write_h5ad(q)
    out = str(tmp_path / "o.h5ad")
    assert main(["annotate", "--query", str(q), "--out", out, "--adapt"]) == 2
    assert "--adapt trains a transformer" in capsys.readouterr().out
    assert main(["annotate", "--query", str(q), "--out", out, "--model", "linear", "--adapt"]) == 2


def test_cli_adapt_writes_the_adapted_annotation(tmp_path):
    reference, query = _pair(seed=3)
    ref_path, q_path, out = tmp_path / "ref.h5ad", tmp_path / "q.h5ad", tmp_path / "out.h5ad"
    reference.write_h5ad(ref_path)
    del query.obs["cell_type"]
    query.write_h5ad(q_path)
    code = main(
        ["annotate", "--reference", str(ref_path), "--labels-key", "cell_type", "--query",
         str(q_path), "--out", str(out), "--model", "transformer", "--adapt", "--max-epochs", "1",
         "--no-progress"]
    )  # fmt: skip
    assert code == 0
    import anndata as ad

    written = ad.read_h5ad(out)
    assert written.uns["cellformer"]["adapted"]["n_cells"] == query.n_obs
    assert written.obs["cellformer_prediction"].notna().all()


def _fit_unlabeled(reference, query, model_cls=cf.model.CellTransformer, **kwargs):
    ref = reference[:, 5:].copy()  # the genes the query has
    model_cls.setup_anndata(ref, labels_key="cell_type")
    model = model_cls(ref)
    model.train(unlabeled=query, enable_progress_bar=False, **kwargs)
    return model


def test_train_unlabeled_never_reads_labels_and_is_deterministic():
    reference, query = _pair()
    truth = query.obs["cell_type"].astype(str).to_numpy()
    shuffled = query.copy()
    shuffled.obs["cell_type"] = np.random.default_rng(0).permutation(truth)
    a = _fit_unlabeled(reference, query, max_epochs=1)
    b = _fit_unlabeled(reference, shuffled, max_epochs=1)
    pa = a.predict(query, soft=True, key_prefix=None)
    pb = b.predict(query, soft=True, key_prefix=None)
    np.testing.assert_array_equal(pa.to_numpy(), pb.to_numpy())
    assert np.mean(pa.idxmax(axis=1).to_numpy() == truth) > 0.9
    assert a.adata.n_obs == reference.n_obs + query.n_obs  # trained on both
    assert a.adapted_to_["fingerprint"] == _adapt.fingerprint(query)
    assert "cell_type" in query.obs and query.obs["cell_type"].astype(str).tolist() == list(truth)


def test_train_unlabeled_true_learns_from_the_registered_unlabelled_cells():
    reference, query = _pair()
    query = query.copy()
    query.obs["cell_type"] = "unknown cell"
    both = ad.concat([reference[:, 5:], query], merge="same", index_unique="-")
    cf.model.LinearClassifier.setup_anndata(
        both, labels_key="cell_type", unlabeled_category="unknown cell"
    )
    model = cf.model.LinearClassifier(both)
    model.train(unlabeled=True, enable_progress_bar=False)
    assert model.adapted_to_["n_cells"] == query.n_obs
    assert 0 < model.adapted_to_["pseudo_labelled"] < query.n_obs
    assert "unknown cell" not in model.classes


def test_train_unlabeled_errors():
    reference, query = _pair()
    ref = reference[:, 5:].copy()
    cf.model.LinearClassifier.setup_anndata(ref, labels_key="cell_type")
    model = cf.model.LinearClassifier(ref)
    with pytest.raises(InputError, match="unlabeled_category, but"):
        model.train(unlabeled=True)
    with pytest.raises(InputError, match="an AnnData of query cells or True"):
        model.train(unlabeled="query.h5ad")
    with pytest.raises(ValueError, match="adapt_options need unlabeled"):
        model.train(adapt_options={"rounds": 3})
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['round'\]"):
        model.train(unlabeled=query, adapt_options={"round": 3})
    other = query.copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="share no gene"):
        model.train(unlabeled=other)
    assert not model.is_trained_ and model.adata is ref  # refused before anything changed
    model.train(enable_progress_bar=False)
    with pytest.raises(InputError, match="on a new, untrained model"):
        model.train(unlabeled=query)
