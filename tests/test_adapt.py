"""The transformer learns from the query: cf.tl.annotate(..., adapt=True) and --adapt."""

import numpy as np
import pytest
from helpers import make_counts

import cellformer as cf
from cellformer.cli import main
from cellformer.pp import InputError
from cellformer.tl import _adapt


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
