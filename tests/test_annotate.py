"""Annotating a user's own query: gene panels, library sizes, majority voting, tl.annotate, CLI."""

import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import make_counts, shared_file, train_linear

import cellformer as cf
from cellformer import InputError, _core
from cellformer.cli import main
from cellformer.model import CellTransformer, LinearClassifier
from cellformer.model.base._voting import HETEROGENEOUS, majority_vote

linear = train_linear


def softmax(logits):
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


# -- gene panels -----------------------------------------------------------------------------
def test_gene_overlap_reports_shared_genes_and_id_kinds():
    ref = make_counts()
    query = ref[:, ref.var_names[20:]].copy()
    query.var_names = [*query.var_names[:-5], "ENSG00000000001", *[f"X{i}" for i in range(4)]]
    overlap = cf.pp.gene_overlap(ref, query)
    assert overlap.n_shared == 35 and list(overlap.shared) == list(ref.var_names[20:55])
    assert overlap.reference_coverage == pytest.approx(35 / 60)
    assert overlap.query_coverage == pytest.approx(35 / 40)
    assert "35 genes shared" in overlap.summary()
    ens = cf.pp.gene_overlap(ref, [f"ENSG{i:011d}" for i in range(50)])
    assert ens.n_shared == 0 and "Ensembl IDs" in ens.summary()


def test_missing_genes_equal_the_mean_imputed_linear_model(counts_adata):
    model = linear(counts_adata)
    query = counts_adata[:, counts_adata.var_names[10:]].copy()  # 10 genes unmeasured
    probs = model.predict(query, soft=True, key_prefix=None).to_numpy()
    # by hand: the query's own library, standardise, the missing genes at the training mean (0)
    X = query.X.toarray()
    lognorm = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    z = np.zeros((query.n_obs, 60))
    z[:, 10:] = (lognorm - model.module.mean.numpy()[10:]) / model.module.std.numpy()[10:]
    w, b = model.module.linear.weight.detach().numpy(), model.module.linear.bias.detach().numpy()
    np.testing.assert_allclose(probs, softmax(z @ w.T + b), atol=1e-5)
    # and not as measured zeros, which is what the module did before
    zero = z.copy()
    zero[:, :10] = -model.module.mean.numpy()[:10] / model.module.std.numpy()[:10]
    assert np.abs(softmax(zero @ w.T + b) - probs).max() > 1e-3


def test_missing_genes_get_no_token_even_where_every_gene_is_a_token(counts_adata):
    CellTransformer.setup_anndata(counts_adata, labels_key="cell_type")
    model = CellTransformer(counts_adata, tokenizer="scbert", d_model=16)
    model.train(max_epochs=1, enable_progress_bar=False, validation_size=0)
    query = counts_adata[:, counts_adata.var_names[5:]].copy()
    tokens = model.tokenize(query)["tokens"]
    real = tokens[tokens != "<pad>"]
    assert not set(counts_adata.var_names[:5]) & set(real)
    full = model.tokenize(counts_adata)["tokens"]
    assert set(counts_adata.var_names[:5]) <= set(full[full != "<pad>"])
    labels = model.predict(query, key_prefix=None)
    assert len(labels) == query.n_obs


def test_query_with_the_model_genes_first_then_extra_genes(counts_adata):
    model = linear(counts_adata)
    extra = ad.AnnData(
        X=np.ones((counts_adata.n_obs, 5), dtype=np.float32),
        obs=counts_adata.obs[[]],
        var=pd.DataFrame(index=[f"EXTRA{i}" for i in range(5)]),
    )
    query = ad.concat([counts_adata, extra], axis=1, merge="first")
    probs = model.predict(query, soft=True, key_prefix=None)
    assert probs.shape == (counts_adata.n_obs, 3)
    # the extra genes count in each cell's library, as in any whole-transcriptome query
    X = query.X.toarray()
    lognorm = np.log1p(X[:, :60] / X.sum(1, keepdims=True) * 1e4)
    z = (lognorm - model.module.mean.numpy()) / model.module.std.numpy()
    w, b = model.module.linear.weight.detach().numpy(), model.module.linear.bias.detach().numpy()
    np.testing.assert_allclose(probs.to_numpy(), softmax(z @ w.T + b), atol=1e-5)
    assert model.get_latent_representation(query, key_prefix=None).shape == (query.n_obs, 3)


def test_min_gene_coverage_is_a_predict_option_and_the_error_says_how_to_fix(counts_adata):
    model = linear(counts_adata)
    query = counts_adata[:, counts_adata.var_names[:20]].copy()  # a third of the genes
    with pytest.raises(InputError, match="genes='shared'"):
        model.predict(query)
    labels = model.predict(query, min_gene_coverage=0.3, key_prefix=None)
    assert len(labels) == query.n_obs
    with pytest.raises(ValueError, match="min_gene_coverage"):
        model.predict(query, min_gene_coverage=1.5)


# -- library sizes -----------------------------------------------------------------------------
def test_subset_genes_keeps_whole_transcriptome_library_sizes(counts_adata):
    sub = cf.pp.subset_genes(counts_adata, counts_adata.var_names[::2])
    assert sub.n_vars == 30
    np.testing.assert_allclose(sub.obs[_core.LIBRARY_KEY], counts_adata.X.sum(1).A1)
    assert counts_adata.n_vars == 60  # the input is left alone


def test_library_size_key_normalises_by_the_full_library(counts_adata):
    full_lognorm = cf.pp.lognormalize(counts_adata.X).toarray()
    sub = cf.pp.subset_genes(counts_adata, counts_adata.var_names[:30])
    with_key = linear(sub.copy(), library_size_key=_core.LIBRARY_KEY)
    np.testing.assert_allclose(
        with_key.module.mean.numpy(), full_lognorm[:, :30].mean(0), rtol=1e-4
    )
    without = linear(sub.copy())
    assert not np.allclose(without.module.mean.numpy(), full_lognorm[:, :30].mean(0), rtol=1e-2)
    # a query normalised over its whole transcriptome then looks like the training cells
    query = counts_adata.copy()
    z_with = with_key.module.encode(torch.as_tensor(full_lognorm[:, :30], dtype=torch.float32))
    assert abs(float(z_with.mean())) < 0.05
    assert with_key.predict(query, key_prefix=None).shape == (query.n_obs,)


def test_library_size_key_in_training_and_transformer(counts_adata):
    sub = cf.pp.subset_genes(counts_adata, counts_adata.var_names[:40])
    CellTransformer.setup_anndata(sub, labels_key="cell_type", library_size_key=_core.LIBRARY_KEY)
    model = CellTransformer(sub, d_model=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    expected = np.log1p(counts_adata.X.toarray()[:, :40] / counts_adata.X.sum(1).A1[:, None] * 1e4)
    np.testing.assert_allclose(
        model.module.linear_mean.numpy(), expected.mean(0), rtol=0.05, atol=0.05
    )
    assert model.predict(counts_adata, key_prefix=None).shape == (counts_adata.n_obs,)


@pytest.mark.parametrize(
    "values, message",
    [([np.nan], "non-positive"), ([0.0], "non-positive"), (["a"], "numbers")],
)
def test_bad_library_sizes_are_clear_errors(counts_adata, values, message):
    counts_adata.obs["lib"] = np.resize(np.asarray(values, dtype=object), counts_adata.n_obs)
    if message != "numbers":
        counts_adata.obs["lib"] = counts_adata.obs["lib"].astype(float)
    with pytest.raises(InputError, match=message):
        LinearClassifier.setup_anndata(counts_adata, labels_key="cell_type", library_size_key="lib")
    with pytest.raises(InputError, match="not a column"):
        LinearClassifier.setup_anndata(
            counts_adata, labels_key="cell_type", library_size_key="nope"
        )


# -- majority voting ----------------------------------------------------------------------------
def test_majority_vote_on_a_constructed_case():
    labels = ["a", "a", "b", "b", "b", "c", "a", "c", "c", "b"]
    clusters = ["1", "1", "1", "2", "2", "2", "3", "3", "3", "4"]
    voted = majority_vote(labels, clusters)
    assert list(voted) == ["a", "a", "a", "b", "b", "b", "c", "c", "c", "b"]
    # ties go to the label that sorts first; a weak majority can be called heterogeneous
    assert list(majority_vote(["x", "y"], ["k", "k"])) == ["x", "x"]
    strict = majority_vote(labels, clusters, min_prop=0.7)
    assert list(strict[:3]) == [HETEROGENEOUS] * 3 and strict[-1] == "b"


@pytest.mark.slow
def test_vote_confidence_is_the_share_of_the_cluster_that_agrees():
    from cellformer.model.base._predict import vote_confidence

    labels = ["B", "B", "T", "T", "T", "NK", "NK", "B"]
    clusters = ["a", "a", "a", "b", "b", "c", "c", "c"]
    voted = majority_vote(labels, clusters)
    assert list(voted) == ["B", "B", "B", "T", "T", "NK", "NK", "NK"]
    np.testing.assert_allclose(
        vote_confidence(labels, clusters, voted), [2 / 3] * 3 + [1.0] * 2 + [2 / 3] * 3, rtol=1e-6
    )


def test_predict_majority_voting_writes_clusters_and_votes(counts_adata):
    model = linear(counts_adata)
    counts_adata.obs["clusters"] = np.repeat(["k0", "k1", "k2", "k3"], 60)
    labels = model.predict(majority_voting=True, over_clustering="clusters")
    obs = counts_adata.obs
    assert list(obs["cellformer_over_clustering"].astype(str)) == list(obs["clusters"])
    for _, group in obs.groupby("clusters", observed=True):
        votes = group["cellformer_majority_voting"].astype(str)
        assert votes.nunique() == 1
        own = group["cellformer_prediction"].astype(str)
        assert votes.iloc[0] == own.value_counts().index[0]
        confidence = group["cellformer_majority_voting_confidence"]
        assert confidence.nunique() == 1 and confidence.dtype == np.float32
        assert confidence.iloc[0] == pytest.approx((own == votes.iloc[0]).mean())
    assert (labels == obs["cellformer_prediction"].astype(str).to_numpy()).all()  # per cell kept
    model.predict(majority_voting=True)  # Leiden over-clustering on the latent space
    n = obs["cellformer_over_clustering"].nunique()
    assert 3 <= n < counts_adata.n_obs
    agree = (obs["cellformer_majority_voting"].astype(str) == obs["cell_type"].astype(str)).mean()
    assert agree > 0.9


# -- tl.annotate ----------------------------------------------------------------------------------
def test_tl_annotate_trains_on_shared_genes_and_reuses_a_saved_model(tmp_path, caplog):
    ref = make_counts(seed=1)
    query = make_counts(seed=2)[:, list(ref.var_names[::3])].copy()  # 20 genes, every block
    with caplog.at_level("WARNING", logger="cellformer"):
        out = cf.tl.annotate(
            query,
            reference=ref,
            labels_key="cell_type",
            max_epochs=30,
            save_model=tmp_path / "m",
            progress=False,
        )
    assert "training on the 20 shared genes" in caplog.text
    assert out is query and out.uns["cellformer"]["n_model_genes"] == 20
    assert "X_cellformer" in query.obsm
    acc = query.obs["cellformer_prediction"].astype(str) == query.obs["cell_type"].astype(str)
    assert acc.mean() > 0.8
    again = cf.tl.annotate(query.copy(), model=str(tmp_path / "m"))
    pd.testing.assert_series_equal(
        again.obs["cellformer_prediction"], query.obs["cellformer_prediction"]
    )
    assert ref.n_vars == 60  # the reference is not changed


def test_a_saved_model_of_an_unknown_class_names_the_classes_that_load(tmp_path, monkeypatch):
    """tl.annotate asks the model registry which class saved a folder (no list of its own)."""
    from cellformer.model import base

    adata = make_counts(n_cells=60, n_genes=20)
    train_linear(adata).save(tmp_path / "m")
    assert cf.tl.annotate(adata.copy(), model=tmp_path / "m").uns["cellformer"]["model"] == (
        "LinearClassifier"
    )
    monkeypatch.setattr(base, "saved_model_name", lambda path, trust=False: "OtherModel")
    with pytest.raises(InputError, match="saved by OtherModel.*CellTransformer.*LinearClassifier"):
        cf.tl.annotate(adata, model=tmp_path / "m")


def test_tl_annotate_needs_a_reference_or_a_model(counts_adata):
    with pytest.raises(InputError, match="reference"):
        cf.tl.annotate(counts_adata)
    with pytest.raises(InputError, match="model="):
        cf.tl.annotate(counts_adata, reference=counts_adata, labels_key="cell_type", model="svm")


@pytest.mark.slow
def test_annotate_real_pbmc_query_with_another_gene_panel(pbmc68k):
    """PBMC3k (2,000 HVG counts) annotates scanpy's pbmc68k_reduced (765 genes, log values)."""
    ref = ad.read_h5ad(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    query = pbmc68k.copy()
    cf.tl.annotate(
        query, reference=ref, labels_key="cell_type", library_size_key="nCount_RNA", progress=False
    )
    assert query.uns["cellformer"]["n_model_genes"] == cf.pp.gene_overlap(ref, query).n_shared
    truth = query.obs["bulk_labels"].astype(str)
    pred = query.obs["cellformer_prediction"].astype(str)
    # FACS-sorted populations with a reference type of the same name
    for sorted_type, ref_type in [("CD19+ B", "B"), ("CD56+ NK", "NK")]:
        assert (pred[truth == sorted_type] == ref_type).mean() > 0.8, sorted_type


# -- the command line -------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    ref = make_counts(seed=1)
    query = make_counts(seed=2)[:, 10:].copy()
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    return tmp_path


def annotate_args(tmp, *extra):
    return [
        "annotate",
        "--reference",
        str(tmp / "ref.h5ad"),
        "--labels-key",
        "cell_type",
        "--query",
        str(tmp / "q.h5ad"),
        "--out",
        str(tmp / "out.h5ad"),
        "--no-progress",
        "--max-epochs",
        "20",
        *extra,
    ]


def test_cli_version_and_fast_help():
    out = subprocess.run(
        [sys.executable, "-m", "cellformer.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.strip() == f"cellformer {cf.__version__}"
    # `cellformer --help` (the entry point, as installed) must not import torch, scvi-tools or
    # anndata (0.7 s of a 1.1 s --help before main() imported pp ahead of parsing)
    code = (
        "import sys\nfrom cellformer.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        "print([m for m in ('torch', 'scvi', 'anndata') if m in sys.modules], file=sys.stderr)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "usage: cellformer" in out.stdout
    assert out.stderr.strip() == "[]"


def test_cli_annotate_all_flags_then_reuse_the_saved_model(files, capsys):
    args = annotate_args(
        files,
        "--genes",
        "shared",
        "--majority-voting",
        "--reject-unknown",
        "--csv",
        str(files / "table.csv"),
        "--save-model",
        str(files / "model"),
    )
    assert main(args) == 0
    out = ad.read_h5ad(files / "out.h5ad")
    assert {"cellformer_majority_voting", "cellformer_unknown", "cellformer_novelty"} <= set(
        out.obs
    )
    assert "Unknown" in out.obs["cellformer_prediction"].cat.categories
    table = pd.read_csv(files / "table.csv", index_col=0)
    assert list(table.index) == list(out.obs_names)
    assert {"cellformer_prediction", "cellformer_confidence"} <= set(table.columns)
    vote = table["cellformer_majority_voting_confidence"]
    assert ((vote > 0) & (vote <= 1)).all()  # the voted label is its cluster's most frequent
    np.testing.assert_allclose(vote, out.obs["cellformer_majority_voting_confidence"], rtol=1e-6)
    assert out.uns["cellformer"]["n_model_genes"] == 50
    # a saved model annotates a new query without a reference and without training
    code = main(
        [
            "annotate",
            "--model",
            str(files / "model"),
            "--query",
            str(files / "q.h5ad"),
            "--out",
            str(files / "again.h5ad"),
        ]
    )
    assert code == 0
    again = ad.read_h5ad(files / "again.h5ad")
    np.testing.assert_allclose(
        again.obs["cellformer_confidence"], out.obs["cellformer_confidence"], rtol=1e-5
    )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, a: a.__setitem__(a.index("cell_type"), "celltype"), "cell_type"),
        (
            lambda t, a: a.__setitem__(a.index(str(t / "out.h5ad")), str(t / "ref.h5ad")),
            "also an input",
        ),
        (lambda t, a: a.__setitem__(a.index(str(t / "out.h5ad")), str(t)), "is a directory"),
        (lambda t, a: a.__setitem__(a.index(str(t / "q.h5ad")), str(t / "q.csv")), "not an .h5ad"),
        (
            lambda t, a: a.__setitem__(a.index(str(t / "q.h5ad")), str(t / "nope.h5ad")),
            "no such file",
        ),
        (lambda t, a: a.extend(["--min-gene-coverage", "2"]), "min-gene-coverage"),
        (lambda t, a: a.extend(["--model", "transformer:bert"]), "preset"),
        (lambda t, a: a.extend(["--model", str(t / "nomodel")]), "does not exist"),
        (lambda t, a: a.extend(["--genes", "all", "--min-gene-coverage", "0.9"]), "genes='shared'"),
        (lambda t, a: a.extend(["--library-size-key", "nCount"]), "library_size_key"),
    ],
)
def test_cli_annotate_errors_come_before_training(files, capsys, monkeypatch, change, message):
    (files / "q.csv").write_text("cell,GENE0\nc1,1\n")

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the input was checked")

    monkeypatch.setattr(LinearClassifier, "train", no_training)
    args = annotate_args(files)
    change(files, args)
    assert main(args) == 2
    err = capsys.readouterr().out
    assert "error:" in err and message in err and "Traceback" not in err
    assert ad.read_h5ad(files / "ref.h5ad").n_vars == 60  # the reference is untouched


def test_query_counts_of_a_gene_subset_with_their_whole_library(tmp_path):
    """A counts query of 30 genes with its whole-transcriptome library sizes is annotated as
    its log-normalised version (normalised over all 60 genes) is; without them it is not."""
    ref, full = make_counts(seed=1), make_counts(seed=2)
    model = train_linear(ref)
    genes = full.var_names[::2]
    lognorm = ad.AnnData(
        cf.pp.lognormalize(full.X)[:, ::2], obs=full.obs[[]].copy(), var=full.var.iloc[::2]
    )
    counts = full[:, genes].copy()
    counts.obs["total"] = full.X.sum(1).A1
    model.save(tmp_path / "m")
    expected = cf.tl.annotate(lognorm, model=str(tmp_path / "m"), min_gene_coverage=0.4)
    whole = cf.tl.annotate(
        counts.copy(),
        model=str(tmp_path / "m"),
        min_gene_coverage=0.4,
        query_library_size_key="total",
    )
    np.testing.assert_allclose(
        whole.obs["cellformer_confidence"], expected.obs["cellformer_confidence"], rtol=1e-4
    )
    subset = cf.tl.annotate(counts.copy(), model=str(tmp_path / "m"), min_gene_coverage=0.4)
    assert not np.allclose(
        subset.obs["cellformer_confidence"], expected.obs["cellformer_confidence"], rtol=1e-3
    )
    with pytest.raises(InputError, match="not a column"):
        cf.tl.annotate(counts.copy(), model=str(tmp_path / "m"), query_library_size_key="nope")


def test_backed_reference_on_the_shared_genes_equals_in_memory(tmp_path):
    """A reference opened with backed='r' is read on the shared genes only, same model."""
    ref = make_counts(seed=1)
    ref.write_h5ad(tmp_path / "ref.h5ad")
    results = []
    for backed in (False, True):
        reference = ad.read_h5ad(tmp_path / "ref.h5ad", backed="r" if backed else None)
        query = make_counts(n_cells=60, seed=2)[:, :20].copy()  # a third of the genes
        del query.obs["cell_type"]
        cf.tl.annotate(
            query, reference=reference, labels_key="cell_type", max_epochs=5, progress=False
        )
        results.append(query.obs["cellformer_prediction"].to_numpy())
        if backed:
            assert reference.isbacked  # the user's object is left as it was
    np.testing.assert_array_equal(results[0], results[1])


def test_annotate_leaves_the_reference_as_it_was():
    """setup_anndata's columns and uns keys go to cellformer's own copy, not the user's."""
    from helpers import make_counts

    reference = make_counts()
    query = make_counts(seed=1)
    obs, uns, var = list(reference.obs.columns), set(reference.uns), reference.var.copy()
    X = reference.X.copy()
    cf.tl.annotate(query, reference=reference, labels_key="cell_type", progress=False)
    assert list(reference.obs.columns) == obs and set(reference.uns) == uns
    assert reference.var.equals(var) and (reference.X != X).nnz == 0
    assert "cellformer_prediction" in query.obs


def _sha256(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def saved_linear(tmp_path):
    """A saved linear model, a query file with extra obs/obsm/uns content, its in-memory result."""
    ref = make_counts(seed=1)
    train_linear(ref).save(tmp_path / "model")
    query = make_counts(seed=2)[:, 5:].copy()
    query.obs["user_clusters"] = pd.Categorical(np.arange(query.n_obs) % 4).astype(str)
    query.obsm["X_user"] = np.ones((query.n_obs, 2), dtype=np.float32)
    query.uns["user_note"] = "kept"
    query.write_h5ad(tmp_path / "q.h5ad")
    expected = cf.tl.annotate(
        query.copy(),
        model=str(tmp_path / "model"),
        majority_voting=True,
        over_clustering="user_clusters",
    )
    return tmp_path, expected


def test_cli_annotates_a_backed_query_as_in_memory_and_leaves_the_input_alone(saved_linear):
    tmp, expected = saved_linear
    before = _sha256(tmp / "q.h5ad")
    args = ["annotate", "--model", str(tmp / "model"), "--query", str(tmp / "q.h5ad")]
    extra = ["--majority-voting", "--over-clustering", "user_clusters", "--no-progress"]
    assert main([*args, "--out", str(tmp / "out.h5ad"), *extra]) == 0
    assert _sha256(tmp / "q.h5ad") == before  # nothing of the input changed
    out = ad.read_h5ad(tmp / "out.h5ad")
    original = ad.read_h5ad(tmp / "q.h5ad")
    np.testing.assert_array_equal(out.X.toarray(), original.X.toarray())
    assert out.uns["user_note"] == "kept" and "X_user" in out.obsm
    for column in ["cellformer_prediction", "cellformer_majority_voting"]:
        assert list(out.obs[column]) == list(expected.obs[column])
    np.testing.assert_allclose(
        out.obs["cellformer_confidence"], expected.obs["cellformer_confidence"], rtol=1e-6
    )
    np.testing.assert_allclose(out.obsm["X_cellformer"], expected.obsm["X_cellformer"], rtol=1e-6)
    assert "obs:cellformer_prediction" in list(out.uns["cellformer_outputs"])
    # the results alone: obs columns, obsm and uns entries, no matrix
    assert main([*args, "--out", str(tmp / "res.h5ad"), "--results-only", *extra]) == 0
    res = ad.read_h5ad(tmp / "res.h5ad")
    assert res.n_vars == 0 and list(res.obs_names) == list(original.obs_names)
    assert "user_clusters" not in res.obs and "cellformer_prediction" in res.obs
    assert list(res.obs["cellformer_majority_voting"]) == list(
        expected.obs["cellformer_majority_voting"]
    )
    np.testing.assert_allclose(res.obsm["X_cellformer"], expected.obsm["X_cellformer"], rtol=1e-6)


def test_cli_interrupted_write_leaves_no_output(saved_linear, monkeypatch):
    from cellformer import _cli_files

    tmp, _ = saved_linear
    real = _cli_files._write_elem()
    calls = []

    def full_disk(f, name, value):
        calls.append(name)
        if len(calls) == 2:  # the obs went in, then the disk is full
            raise OSError(28, "No space left on device")
        return real(f, name, value)

    monkeypatch.setattr(_cli_files, "_write_elem", lambda: full_disk)
    args = ["annotate", "--model", str(tmp / "model"), "--query", str(tmp / "q.h5ad")]
    with pytest.raises(OSError, match="No space left"):
        main([*args, "--out", str(tmp / "out.h5ad"), "--no-progress"])
    assert calls[:1] == ["obs"]
    assert not (tmp / "out.h5ad").exists()
    assert not [p for p in tmp.iterdir() if p.name.startswith(".out")]  # no temporary file left


def test_over_clustering_needs_majority_voting_and_an_existing_column(saved_linear, capsys):
    tmp, _ = saved_linear
    args = ["annotate", "--model", str(tmp / "model"), "--query", str(tmp / "q.h5ad")]
    args += ["--out", str(tmp / "out.h5ad")]
    assert main([*args, "--over-clustering", "user_clusters"]) == 2
    assert "--majority-voting" in capsys.readouterr().out
    assert main([*args, "--majority-voting", "--over-clustering", "nope"]) == 2
    assert "no such column" in capsys.readouterr().out
    assert not (tmp / "out.h5ad").exists()


def test_over_clustering_of_a_query_past_scanpys_approximate_knn_threshold():
    """From 8,192 cells scanpy's kNN graph is pynndescent's, whose csr_array it could not read."""
    from cellformer.model.base import over_cluster

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 4)) * 10
    groups = rng.integers(0, 3, 8300)
    latent = centers[groups] + rng.normal(size=(8300, 4))
    clusters = over_cluster(latent, resolution=0.1)
    assert len(clusters) == 8300
    # well separated groups: every cluster lies within one group
    frame = pd.DataFrame({"cluster": clusters, "group": groups})
    assert (frame.groupby("cluster")["group"].nunique() == 1).all()
    votes = majority_vote(np.asarray(["a", "b", "c"])[groups], clusters)
    assert (votes == np.asarray(["a", "b", "c"])[groups]).mean() == 1.0


def test_cli_prints_errors_verbatim(tmp_path, capsys):
    """No rich markup is read from a message (``[@REVISION]`` survives), no path broken in two."""
    long_dir = tmp_path / ("a_rather_long_directory_name_" * 4)
    long_dir.mkdir()
    query = long_dir / "q.h5ad"
    ad.AnnData(np.ones((3, 2), dtype=np.float32)).write_h5ad(query)
    out = ["--out", str(tmp_path / "out.h5ad")]
    assert main(["annotate", "--query", str(query), *out, "--model", "hf:not a name"]) == 2
    err = capsys.readouterr().out
    assert "hf:ORG/NAME[@REVISION]" in err and "Traceback" not in err
    assert (
        main(["annotate", "--query", str(query), *out, "--model", str(long_dir / "nomodel")]) == 2
    )
    assert str(long_dir / "nomodel") in capsys.readouterr().out
