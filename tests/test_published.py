"""Starting from published models: CellTypist files, model cards, models on the Hugging Face Hub."""

import json
import pickle

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from helpers import fill_hf_cache, make_counts, shared_file, train_linear

import cellformer as cf
from cellformer import InputError
from cellformer.cli import main

celltypist = pytest.importorskip("celltypist")


def _lognorm(adata):
    """log1p of counts per 10,000, as CellTypist expects, in float64 (so that both sides compute
    alike: in float32 they differ by float32 rounding, up to ~1e-5 in a probability)."""
    out = adata.copy()
    out.X = out.X.astype(np.float64)
    sc.pp.normalize_total(out, target_sum=1e4)
    sc.pp.log1p(out)
    return out


@pytest.fixture(scope="module")
def pbmc3k():
    """Real PBMC3k counts, split in a training half and a query half (seeded)."""
    data = ad.read_h5ad(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    order = np.random.default_rng(1).permutation(data.n_obs)
    return data[order[:1300]].copy(), data[order[1300:]].copy()


@pytest.fixture(scope="module")
def sgd_model(pbmc3k, tmp_path_factory):
    """A CellTypist model trained by celltypist.train (SGD path) and written to a .pkl."""
    train, _ = pbmc3k
    model = celltypist.train(
        _lognorm(train), labels="cell_type", use_SGD=True, feature_selection=False, n_jobs=1
    )
    path = tmp_path_factory.mktemp("ct") / "pbmc_sgd.pkl"
    model.write(str(path))
    return path


def _lr_model_file(train, path, with_mean=True, n_classes=None):
    """The file celltypist.train's LR path writes, built with scikit-learn directly when that
    path fails (celltypist 1.7.1 passes multi_class, which scikit-learn >= 1.8 removed)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    data = _lognorm(train)
    if n_classes is not None:
        keep = data.obs["cell_type"].isin(data.obs["cell_type"].value_counts().index[:n_classes])
        data = data[keep].copy()
    try:
        model = celltypist.train(
            data, labels="cell_type", feature_selection=False, n_jobs=1, with_mean=with_mean
        )
        model.write(str(path))
        return "celltypist.train"
    except TypeError as err:
        assert "multi_class" in str(err)
    X = data.X.toarray() if hasattr(data.X, "toarray") else np.asarray(data.X)
    scaler = StandardScaler(with_mean=with_mean).fit(X)
    Xs = scaler.transform(X)
    Xs[Xs > 10] = 10
    clf = LogisticRegression(C=1.0, max_iter=300).fit(Xs, data.obs["cell_type"].astype(str))
    clf.features = np.asarray(data.var_names)
    clf.multi_class = "ovr"  # what older scikit-learn releases keep in such a file
    with open(path, "wb") as fh:
        pickle.dump({"Model": clf, "Scaler_": scaler, "description": {"details": "test"}}, fh)
    return "scikit-learn"


def _celltypist_annotate(query, path, **kwargs):
    data = _lognorm(query)
    data.X = (
        data.X.toarray()
    )  # celltypist 1.7.1 cannot clip a sparse query of a with_mean=False model
    return celltypist.annotate(data, model=str(path), **kwargs)


def _assert_equal_to_celltypist(model, path, query, **annotate_kwargs):
    ours = query.copy()
    labels = model.predict(ours)
    probs = model.predict(ours, soft=True, key_prefix=None)
    theirs = _celltypist_annotate(query, path, **annotate_kwargs)
    their_labels = theirs.predicted_labels["predicted_labels"].astype(str).to_numpy()
    assert np.mean(labels == their_labels) >= 0.999
    their_probs = theirs.probability_matrix.loc[ours.obs_names, probs.columns]
    np.testing.assert_allclose(probs.to_numpy(), their_probs.to_numpy(), rtol=0, atol=1e-8)
    return ours, theirs


def test_sgd_model_predicts_as_celltypist(pbmc3k, sgd_model):
    _, query = pbmc3k
    model = cf.model.LinearClassifier.from_celltypist(sgd_model)
    assert set(model.classes) == set(query.obs["cell_type"].astype(str))
    ours, _ = _assert_equal_to_celltypist(model, sgd_model, query)
    for key in ("prediction", "confidence", "entropy", "unknown"):
        assert f"cellformer_{key}" in ours.obs
    assert "cellformer_novelty" not in ours.obs  # no training cells, no novelty score
    accuracy = np.mean(ours.obs["cellformer_prediction"].astype(str) == query.obs["cell_type"])
    assert accuracy > 0.7  # CellTypist's SGD model itself (equal to celltypist.annotate)
    # log-normalised input gives the same answer as counts
    np.testing.assert_array_equal(
        model.predict(_lognorm(query), key_prefix=None), ours.obs["cellformer_prediction"]
    )


@pytest.mark.parametrize("with_mean", [True, False])
def test_lr_model_file_predicts_as_celltypist(pbmc3k, tmp_path, with_mean):
    train, query = pbmc3k
    path = tmp_path / "pbmc_lr.pkl"
    _lr_model_file(train, path, with_mean=with_mean)
    model = cf.model.LinearClassifier.from_celltypist(str(path))
    _assert_equal_to_celltypist(model, path, query)
    loaded = celltypist.models.Model.load(str(path))  # a Model object reads the same
    np.testing.assert_array_equal(
        cf.model.LinearClassifier.from_celltypist(loaded).predict(query.copy(), key_prefix=None),
        model.predict(query.copy(), key_prefix=None),
    )


def test_binary_model(pbmc3k, tmp_path):
    train, query = pbmc3k
    path = tmp_path / "two.pkl"
    _lr_model_file(train, path, n_classes=2)
    model = cf.model.LinearClassifier.from_celltypist(path)
    assert model.n_classes == 2
    _assert_equal_to_celltypist(model, path, query)


def test_unknown_by_confidence_is_celltypists_unassigned(pbmc3k, sgd_model):
    _, query = pbmc3k
    model = cf.model.LinearClassifier.from_celltypist(sgd_model, p_thres=0.5)
    ours = query.copy()
    labels = model.predict(ours, reject_unknown=True)
    theirs = _celltypist_annotate(query, sgd_model, mode="prob match", p_thres=0.5)
    unassigned = theirs.predicted_labels["predicted_labels"].astype(str).to_numpy() == "Unassigned"
    np.testing.assert_array_equal(labels == "Unknown", unassigned)


def test_majority_voting_save_load_and_model_card(pbmc3k, sgd_model, tmp_path):
    _, query = pbmc3k
    model = cf.model.LinearClassifier.from_celltypist(sgd_model)
    before = model.predict(query.copy(), soft=True, key_prefix=None)
    voted = query.copy()
    model.predict(voted, majority_voting=True)
    assert voted.obs["cellformer_majority_voting"].notna().all()
    agree = voted.obs["cellformer_majority_voting"] == voted.obs["cellformer_prediction"]
    assert agree.mean() > 0.8
    model.save(str(tmp_path / "ct"), license="cc-by-4.0")
    loaded = cf.model.LinearClassifier.load(str(tmp_path / "ct"))
    after = loaded.predict(query.copy(), soft=True, key_prefix=None)
    np.testing.assert_array_equal(before.to_numpy(), after.to_numpy())
    card = (tmp_path / "ct" / "README.md").read_text()
    assert "CellTypist model (SGDClassifier)" in card and "cc-by-4.0" in card


def test_annotate_and_cli_take_a_celltypist_file(pbmc3k, sgd_model, tmp_path):
    _, query = pbmc3k
    theirs = _celltypist_annotate(query, sgd_model).predicted_labels["predicted_labels"]
    annotated = cf.tl.annotate(query.copy(), model=str(sgd_model), progress=False)
    assert (
        np.mean(annotated.obs["cellformer_prediction"].astype(str) == theirs.astype(str)) >= 0.999
    )
    assert "X_cellformer" in annotated.obsm
    q = tmp_path / "q.h5ad"
    query.write_h5ad(q)
    out = tmp_path / "o.h5ad"
    code = main(["annotate", "--model", str(sgd_model), "--query", str(q), "--out", str(out)])
    assert code == 0
    written = ad.read_h5ad(out)
    assert np.mean(written.obs["cellformer_prediction"].astype(str) == theirs.astype(str)) >= 0.999


def test_transformer_on_a_celltypist_linear_path(pbmc3k, sgd_model):
    train, query = pbmc3k
    linear = cf.model.LinearClassifier.from_celltypist(sgd_model)
    ref = train[:400].copy()
    cf.model.CellTransformer.setup_anndata(ref, labels_key="cell_type")
    model = cf.model.CellTransformer(ref, n_layers=1, d_model=32, n_heads=2)
    model.use_linear_path(linear)
    rows = pd.Index(linear.classes).get_indexer(model.classes)
    cols = pd.Index(linear.var_names).get_indexer(model.var_names)
    expected = linear.module.linear.weight.detach().double()[rows][:, cols[cols >= 0]]
    weight = model.module.linear.weight.detach().clone()
    np.testing.assert_allclose(weight[:, cols >= 0].double(), expected, rtol=1e-6)
    assert (weight[:, cols < 0] == 0).all()  # genes the CellTypist model lacks: no weight
    model.train(max_epochs=2, enable_progress_bar=False)
    assert bool((model.module.linear.weight == weight).all())  # frozen, and not refit
    assert model.linear_path_source_["format"] == "celltypist"
    labels = model.predict(query.copy(), key_prefix=None)
    assert np.mean(labels == query.obs["cell_type"].astype(str).to_numpy()) > 0.7


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (pickle.dumps([1, 2, 3]), "not a CellTypist model.*holds a list"),
        (pickle.dumps({"Model": None}), "without 'Scaler_'"),
        (b"this is not a pickle", "not a CellTypist model"),
        (b"", "not a CellTypist model"),
    ],
)
def test_a_file_that_is_not_a_celltypist_model(tmp_path, content, message):
    path = tmp_path / "bad.pkl"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        cf.model.LinearClassifier.from_celltypist(path)


def test_missing_file_and_model_without_the_querys_genes(tmp_path, sgd_model, capsys):
    with pytest.raises(InputError, match="does not exist"):
        cf.model.LinearClassifier.from_celltypist(tmp_path / "none.pkl")
    other = make_counts()  # genes GENE0... share nothing with the model's
    with pytest.raises(InputError, match="Only 0.0% of the model's"):
        cf.tl.annotate(other, model=str(sgd_model), progress=False)
    q = tmp_path / "q.h5ad"
    other.write_h5ad(q)
    out = tmp_path / "o.h5ad"
    assert (
        main(["annotate", "--model", str(tmp_path / "x.pkl"), "--query", str(q), "--out", str(out)])
        == 2
    )
    assert "no such file" in capsys.readouterr().out


# -- model cards and the Hub ------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_linear(tmp_path_factory):
    data = make_counts()
    model = train_linear(data.copy())
    cf.model.LinearClassifier.setup_anndata(data, labels_key="cell_type")
    model = cf.model.LinearClassifier(data)
    model.train(validation_size=0.2, enable_progress_bar=False)
    path = tmp_path_factory.mktemp("saved") / "model"
    model.save(str(path))
    return path, data


def test_save_writes_a_model_card_scvi_hub_reads(saved_linear):
    from scvi.hub import HubModel

    path, data = saved_linear
    card = (path / "README.md").read_text()
    for text in (
        "library_name: scvi-tools",
        "model_cls_name:LinearClassifier",
        "type_0",
        "macro-F1",
    ):
        assert text in card
    meta = json.loads((path / "_scvi_required_metadata.json").read_text())
    assert meta["model_parent_module"] == "cellformer.model"
    hub = HubModel(str(path))
    assert hub.metadata.model_cls_name == "LinearClassifier"
    assert "cellformer" in hub.model_card.content
    hub.load_model(adata=data.copy())
    assert isinstance(hub.model, cf.model.LinearClassifier)
    np.testing.assert_array_equal(
        hub.model.predict(data.copy(), key_prefix=None),
        cf.model.LinearClassifier.load(str(path)).predict(data.copy(), key_prefix=None),
    )


def test_hf_models_come_from_the_cache_offline(offline_hf_cache, saved_linear, sgd_model, pbmc3k):
    path, data = saved_linear
    fill_hf_cache(offline_hf_cache, "lab/linear", {p.name: p.read_bytes() for p in path.iterdir()})
    annotated = cf.tl.annotate(data.copy(), model="hf:lab/linear", progress=False)
    expected = cf.model.LinearClassifier.load(str(path)).predict(data.copy(), key_prefix=None)
    np.testing.assert_array_equal(annotated.obs["cellformer_prediction"].astype(str), expected)
    fill_hf_cache(offline_hf_cache, "lab/celltypist", {"pbmc.pkl": sgd_model.read_bytes()})
    _, query = pbmc3k
    with pytest.raises(cf.UnsafeFileError, match="pickle.*trust=True"):  # a pickle from the Hub
        cf.tl.annotate(query.copy(), model="hf:lab/celltypist", progress=False)
    annotated = cf.tl.annotate(query.copy(), model="hf:lab/celltypist", progress=False, trust=True)
    assert annotated.obs["cellformer_prediction"].notna().all()


def test_hf_model_not_cached_offline_is_one_clear_line(offline_hf_cache, capsys, tmp_path):
    data = make_counts()
    with pytest.raises(InputError, match="not in the local cache.*hf download lab/none"):
        cf.tl.annotate(data, model="hf:lab/none", progress=False)
    with pytest.raises(InputError, match="not a Hugging Face Hub model name"):
        cf.tl.annotate(data, model="hf:no-slash", progress=False)
    q = tmp_path / "q.h5ad"
    data.write_h5ad(q)
    code = main(
        ["annotate", "--model", "hf:lab/none", "--query", str(q), "--out", str(tmp_path / "o.h5ad")]
    )
    assert code == 2
    assert "hf download" in capsys.readouterr().out


def test_unknown_hub_repository(monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    def refuse(repo_id, **kwargs):
        raise errors.RepositoryNotFoundError(f"404: {repo_id}", response=_Response())

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(InputError, match="No model 'lab/unknown' on the Hugging Face Hub"):
        cf.tl.annotate(make_counts(), model="hf:lab/unknown", progress=False)


class _Response:
    status_code = 404
    headers: dict = {}
    url = "https://huggingface.co/api/models/lab/unknown"
    request = None


def test_class_counts_in_the_card_are_the_training_cells(saved_linear):
    path, data = saved_linear
    card = (path / "README.md").read_text()
    model = cf.model.LinearClassifier.load(str(path))
    counts = model.training_summary_["class_counts"]
    assert sum(counts.values()) == model.training_summary_["n_train_cells"]
    assert sum(counts.values()) + model.training_summary_["n_validation_cells"] == data.n_obs
    for name, n in counts.items():
        assert f"| {name} | {n} |" in card
    assert isinstance(pd.Series(counts).sum(), np.integer | int)
