"""Bad or awkward input, through the API and the CLI: a clear error naming the problem and the
fix, or the correct result. Never a raw internal traceback, never a silently wrong result."""

import hashlib
import logging
import tarfile

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import make_counts

import cellformer as cf
from cellformer import InputError
from cellformer.cli import main
from cellformer.model import CellTransformer, LinearClassifier

LABELS = "cell_type"


def fresh(**kwargs) -> ad.AnnData:
    return make_counts(**kwargs)


@pytest.fixture(scope="module")
def trained():
    """A linear model with Unknown thresholds, and its training data (not to be modified)."""
    data = fresh()
    LinearClassifier.setup_anndata(data, labels_key=LABELS)
    model = LinearClassifier(data)
    model.train(max_epochs=30, validation_size=0.2, enable_progress_bar=False)
    return model, data


def dense(adata):
    return adata.X.toarray() if sp.issparse(adata.X) else np.asarray(adata.X)


def with_x(adata, X):
    out = adata.copy()
    out.X = sp.csr_matrix(X.astype(np.float32))
    return out


def lognorm_of(adata, target=1e4, log=np.log1p):
    X = dense(adata).astype(np.float64)
    return with_x(adata, log(X / X.sum(1, keepdims=True) * target))


def relabel(values):
    def change(a):
        labels = a.obs[LABELS].astype(str).to_numpy().copy()
        labels[: len(values)] = values
        a.obs[LABELS] = labels
        return a

    return change


def setup(change, **kwargs):
    def run(_):
        a = change(fresh())
        LinearClassifier.setup_anndata(a, **{"labels_key": LABELS, **kwargs})

    return run


def set_x(fn):
    def change(a):
        return with_x(a, fn(dense(a)))

    return change


def first(fn):
    def change(X):
        X = X.copy()
        fn(X)
        return X

    return change


def annotate_on(make_query):
    """cf.tl.annotate of a query made from the data, with the data as reference."""

    def call(ctx):
        data = ctx[1]
        return cf.tl.annotate(
            make_query(data), reference=data.copy(), labels_key=LABELS, progress=False
        )

    return call


def predict_on(make_query, **kwargs):
    def run(ctx):
        model, data = ctx
        return model.predict(make_query(data), key_prefix=None, **kwargs)

    return run


def genes(sel):
    return lambda d: d[:, sel(d.var_names)].copy()


# -- rows that must raise: (id, call, exception, message that names the problem) --------------
ERRORS = [
    # setup_anndata: labels
    (
        "labels_key typo",
        setup(lambda a: a, labels_key="celltype"),
        InputError,
        "Did you mean 'cell_type'",
    ),
    ("labels_key None", setup(lambda a: a, labels_key=None), InputError, "labels_key is required"),
    (
        "labels with NaN",
        setup(
            lambda a: (
                a.obs.__setitem__(
                    LABELS, a.obs[LABELS].astype(object).where(np.arange(a.n_obs) > 3)
                )
                or a
            )
        ),
        InputError,
        "missing values",
    ),
    ("label 'unknown'", setup(relabel(["unknown"] * 5)), InputError, "'no label'"),
    ("label 'nan' string", setup(relabel(["nan"] * 5)), InputError, "'no label'"),
    ("label 'NA'", setup(relabel(["NA"] * 5)), InputError, "'no label'"),
    ("label ''", setup(relabel([""] * 5)), InputError, "'no label'"),
    ("label 'None'", setup(relabel(["None"] * 5)), InputError, "'no label'"),
    ("one class", setup(relabel(["type_0"] * 240)), InputError, "at least 2"),
    (
        "continuous labels",
        setup(lambda a: a.obs.__setitem__(LABELS, np.linspace(0, 1, a.n_obs)) or a),
        InputError,
        "continuous",
    ),
    # setup_anndata: expression values
    ("negative values", setup(set_x(lambda X: X - 1)), InputError, "negative"),
    ("z-scored", setup(set_x(lambda X: (X - X.mean(0)) / (X.std(0) + 1))), InputError, "scaled"),
    (
        "NaN value",
        setup(set_x(first(lambda X: X.__setitem__((0, 0), np.nan)))),
        InputError,
        "NaN or infinite",
    ),
    (
        "inf value",
        setup(set_x(first(lambda X: X.__setitem__((0, 0), np.inf)))),
        InputError,
        "NaN or infinite",
    ),
    ("empty cell", setup(set_x(first(lambda X: X.__setitem__(3, 0)))), InputError, "no expression"),
    ("all zeros", setup(set_x(lambda X: X * 0)), InputError, "only zeros"),
    (
        "CP10k not logged",
        setup(lambda a: lognorm_of(a, log=lambda v: v)),
        InputError,
        "not log-transformed",
    ),
    (
        "log2(CPM+1)",
        setup(lambda a: lognorm_of(a, 1e6, lambda v: np.log2(v + 1))),
        InputError,
        "log2",
    ),
    (
        "log10(CP10k+1)",
        setup(lambda a: lognorm_of(a, 1e4, lambda v: np.log10(v + 1))),
        InputError,
        "log10",
    ),
    ("log1p(CPM)", setup(lambda a: lognorm_of(a, 1e6)), InputError, "10,000"),
    (
        "log1p(counts), not normalised",
        setup(set_x(lambda X: np.log1p(X).astype(np.float32))),
        InputError,
        "never normalised",
    ),
    (
        "query log1p(counts)",
        predict_on(set_x(lambda X: np.log1p(X).astype(np.float32))),
        InputError,
        "never normalised",
    ),
    (
        "large non-integer values",
        setup(set_x(lambda X: X * np.random.default_rng(0).uniform(0.6, 1.0, X.shape) * 10)),
        InputError,
        "round",
    ),
    # setup_anndata: structure
    ("duplicated genes", setup(lambda a: _dup(a)), InputError, "more than once"),
    ("empty gene name", setup(lambda a: _rename(a, 0, "")), InputError, "empty strings"),
    ("missing layer", setup(lambda a: a, layer="raw_counts"), InputError, "not in adata.layers"),
    ("missing batch_key", setup(lambda a: a, batch_key="donor"), InputError, "batch_key='donor'"),
    (
        "library_size_key missing",
        setup(lambda a: a, library_size_key="nCount_RNA"),
        InputError,
        "not a column",
    ),
    (
        "library sizes zero",
        setup(lambda a: a.obs.__setitem__("lib", 0.0) or a, library_size_key="lib"),
        InputError,
        "non-positive",
    ),
    (
        "library sizes text",
        setup(lambda a: a.obs.__setitem__("lib", "x") or a, library_size_key="lib"),
        InputError,
        "numbers",
    ),
    (
        "a DataFrame",
        lambda _: LinearClassifier.setup_anndata(pd.DataFrame({"a": [1]}), labels_key="a"),
        InputError,
        "Expected an AnnData",
    ),
    ("no cells", setup(lambda a: a[:0].copy()), InputError, "empty"),
    # model options and training
    ("C = 0", lambda ctx: LinearClassifier(ctx[1], C=0), ValueError, "C must be positive"),
    (
        "validation_size 1.5",
        lambda ctx: _new_linear().train(validation_size=1.5, max_epochs=1),
        ValueError,
        "validation_size",
    ),
    (
        "temperature without validation",
        lambda ctx: _new_linear().train(temperature_scaling=True, max_epochs=1),
        ValueError,
        "validation split",
    ),
    (
        "early stopping without validation",
        lambda ctx: _new_linear().train(early_stopping=True, max_epochs=1),
        ValueError,
        "validation split",
    ),
    (
        "setup again with other labels",
        lambda ctx: _resetup_then_train(),
        InputError,
        "setup_anndata was run on this AnnData again",
    ),
    ("unknown attention", lambda ctx: _transformer(attention="sparse"), ValueError, "attention"),
    # prediction
    ("no shared gene", predict_on(lambda d: _renamed(d, "OTHER")), InputError, "Only 0.0%"),
    (
        "Ensembl IDs vs symbols",
        predict_on(lambda d: _renamed(d, "ENSG0000000")),
        InputError,
        "Ensembl IDs",
    ),
    ("low coverage", predict_on(genes(lambda v: v[:20])), InputError, "genes='shared'"),
    (
        "lower-case genes (other species?)",
        predict_on(lambda d: _renamed(d, None)),
        InputError,
        "case is ignored",
    ),
    ("query duplicated genes", predict_on(lambda d: _dup(d.copy())), InputError, "more than once"),
    ("query transposed", predict_on(lambda d: d.T.copy()), InputError, "use adata.T"),
    (
        "query genes with spaces",
        predict_on(lambda d: _spaced(d)),
        InputError,
        "spaces are removed",
    ),
    (
        "tl.annotate transposed query",
        annotate_on(lambda d: d.T.copy()),
        InputError,
        "use adata.T",
    ),
    (
        "query NaN",
        predict_on(set_x(first(lambda X: X.__setitem__((1, 1), np.nan)))),
        InputError,
        "NaN or infinite",
    ),
    ("query negative", predict_on(set_x(lambda X: X - 5)), InputError, "negative"),
    ("query all zeros", predict_on(set_x(lambda X: X * 0)), InputError, "only zeros"),
    (
        "query log2",
        predict_on(lambda d: lognorm_of(d, 1e6, lambda v: np.log2(v + 1))),
        InputError,
        "log2",
    ),
    (
        "query not AnnData",
        lambda ctx: ctx[0].predict(np.ones((3, 60))),
        InputError,
        "Expected an AnnData",
    ),
    (
        "query missing layer",
        predict_on(lambda d: d.copy(), layer="spliced"),
        InputError,
        "not in adata.layers",
    ),
    (
        "query library key missing",
        predict_on(lambda d: d.copy(), library_size_key="nCount"),
        InputError,
        "not a column",
    ),
    ("mc_samples 0", predict_on(lambda d: d.copy(), mc_samples=0), ValueError, "mc_samples"),
    (
        "min_gene_coverage 2",
        predict_on(lambda d: d.copy(), min_gene_coverage=2),
        ValueError,
        "min_gene_coverage",
    ),
    (
        "reject_unknown without thresholds",
        lambda ctx: _new_linear(trained=True).predict(reject_unknown=True),
        ValueError,
        "validation split",
    ),
    (
        "over_clustering not a column",
        predict_on(lambda d: d.copy(), majority_voting=True, over_clustering="leiden"),
        InputError,
        "not a column",
    ),
    (
        "over_clustering wrong length",
        predict_on(lambda d: d.copy(), majority_voting=True, over_clustering=np.zeros(3)),
        InputError,
        "3 values",
    ),
    (
        "loaded model, no data",
        lambda ctx: _saved_then_loaded(ctx).predict(),
        ValueError,
        "Pass adata",
    ),
    (
        "loaded model trains",
        lambda ctx: _saved_then_loaded(ctx).train(),
        InputError,
        "no registered training data",
    ),
    # saved models
    (
        "load missing dir",
        lambda ctx: LinearClassifier.load("/nonexistent/model"),
        InputError,
        "does not exist",
    ),
    (
        "load a model file",
        lambda ctx: LinearClassifier.load(_saved(ctx) / "model.json"),
        InputError,
        "is a file",
    ),
    (
        "load a dir without model.json",
        lambda ctx: LinearClassifier.load(_saved(ctx).parent),
        InputError,
        "holds no model.json",
    ),
    (
        "load a truncated model.safetensors",
        lambda ctx: LinearClassifier.load(_damaged(ctx, "model.safetensors", truncate=True)),
        InputError,
        "model.safetensors' is damaged",
    ),
    (
        "load a garbage model.safetensors",
        lambda ctx: LinearClassifier.load(_damaged(ctx, "model.safetensors", truncate=False)),
        InputError,
        "model.safetensors' is damaged",
    ),
    (
        "load a truncated model.json",
        lambda ctx: LinearClassifier.load(_damaged(ctx, "model.json", truncate=True)),
        InputError,
        "model.json' is damaged",
    ),
    (
        "load with the other class",
        lambda ctx: CellTransformer.load(_saved(ctx)),
        InputError,
        "another model class",
    ),
    ("save twice", lambda ctx: ctx[0].save(_saved(ctx)), cf.OverwriteError, "overwrite=True"),
    (
        "tl.annotate bad model kind",
        lambda ctx: cf.tl.annotate(
            ctx[1].copy(), reference=fresh(), labels_key=LABELS, model="svm"
        ),
        InputError,
        "model='svm'",
    ),
    (
        "tl.annotate no reference",
        lambda ctx: cf.tl.annotate(ctx[1].copy()),
        InputError,
        "reference",
    ),
    (
        "tl.annotate genes='all' on low coverage",
        lambda ctx: cf.tl.annotate(
            ctx[1][:, :20].copy(), reference=fresh(), labels_key=LABELS, genes="all"
        ),
        InputError,
        "genes='shared'",
    ),
]

_TMP = {}


def _dup(a):
    names = list(a.var_names)
    names[-1] = names[0]
    a.var_names = names
    return a


def _rename(a, i, name):
    names = list(a.var_names)
    names[i] = name
    a.var_names = names
    return a


def _ids_with_symbol_column(d):
    """IDs as var_names, the model's gene names in var['symbol'] (read_10x_mtx's two columns)."""
    q = d.copy()
    q.var["symbol"] = q.var_names.astype(str)
    q.var_names = [f"ENSG{i:011d}" for i in range(q.n_vars)]
    return q


def _spaced(d):
    q = d.copy()
    q.var_names = [f" {n} " for n in q.var_names]
    return q


def _renamed(d, prefix):
    q = d.copy()
    q.var_names = [
        n.lower() if prefix is None else f"{prefix}{i:05d}" for i, n in enumerate(q.var_names)
    ]
    return q


def _new_linear(trained=False):
    data = fresh()
    LinearClassifier.setup_anndata(data, labels_key=LABELS)
    model = LinearClassifier(data)
    if trained:
        model.train(max_epochs=2, enable_progress_bar=False)
    return model


def _resetup_then_train():
    data = fresh()
    data.obs["other"] = np.where(np.arange(data.n_obs) % 2, "x", "y")
    LinearClassifier.setup_anndata(data, labels_key=LABELS)
    model = LinearClassifier(data)
    LinearClassifier.setup_anndata(data, labels_key="other")
    model.train(max_epochs=1, enable_progress_bar=False)


def _transformer(**kwargs):
    data = fresh()
    CellTransformer.setup_anndata(data, labels_key=LABELS)
    return CellTransformer(data, **kwargs)


def _saved(ctx):
    if "saved" not in _TMP:
        import tempfile
        from pathlib import Path

        path = Path(tempfile.mkdtemp()) / "model"
        ctx[0].save(path)
        _TMP["saved"] = path
    return _TMP["saved"]


def _saved_then_loaded(ctx):
    return LinearClassifier.load(_saved(ctx))


def _damaged(ctx, name: str, truncate: bool):
    import shutil

    source = _saved(ctx)
    target = source.parent / f"damaged_{name}_{truncate}"
    shutil.copytree(source, target, dirs_exist_ok=True)
    data = (target / name).read_bytes()
    (target / name).write_bytes(data[: len(data) // 3] if truncate else b"not a model" * 50)
    return target


@pytest.mark.parametrize(
    "call, error, message", [r[1:] for r in ERRORS], ids=[r[0] for r in ERRORS]
)
def test_bad_input_is_a_clear_error(trained, call, error, message):
    with pytest.raises(error) as info:
        call(trained)
    assert message in str(info.value)


# -- rows that must give the correct result --------------------------------------------------------
def test_query_with_extra_genes_after_the_model_genes(trained):
    model, data = trained
    extra = ad.AnnData(
        np.ones((data.n_obs, 5), np.float32),
        obs=data.obs[[]],
        var=pd.DataFrame(index=list("VWXYZ")),
    )
    query = ad.concat([data, extra], axis=1)
    labels = model.predict(query, key_prefix=None)
    assert (labels == data.obs[LABELS].to_numpy()).mean() > 0.95
    assert model.get_latent_representation(query, key_prefix=None).shape == (data.n_obs, 3)


def test_reversed_gene_order_gives_the_same_probabilities(trained):
    model, data = trained
    reversed_ = data[:, data.var_names[::-1]].copy()
    np.testing.assert_allclose(
        model.predict(reversed_, soft=True, key_prefix=None),
        model.predict(data.copy(), soft=True, key_prefix=None),
        rtol=1e-5,
    )


def test_float16_query_gives_the_same_probabilities(trained):
    """float16 counts (scipy.sparse has no float16; a cell's sum overflows float16 above 65,504)."""
    model, data = trained
    half, full = data.copy(), data.copy()
    half.X = (dense(data) * 300).astype(np.float16)  # libraries beyond float16's range
    full.X = (dense(data) * 300).astype(np.float32)
    assert half.X.dtype == np.float16 and np.isinf(half.X.sum(1, dtype=np.float16)).any()
    np.testing.assert_allclose(
        model.predict(half, soft=True, key_prefix=None),
        model.predict(full, soft=True, key_prefix=None),
        rtol=1e-4,
        atol=1e-6,
    )


def test_log_normalised_query_of_a_counts_model_gives_the_same_labels(trained):
    model, data = trained
    np.testing.assert_array_equal(
        model.predict(lognorm_of(data), key_prefix=None),
        model.predict(data.copy(), key_prefix=None),
    )


def test_empty_cells_in_a_query_are_marked_not_fatal(trained, caplog):
    model, data = trained
    query = set_x(first(lambda X: X.__setitem__(slice(0, 2), 0)))(data)
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        labels = model.predict(query)
    assert list(labels[:2]) == ["Unknown", "Unknown"] and "2 of 240 cells" in caplog.text
    assert np.isnan(query.obs["cellformer_confidence"][:2]).all()
    assert (labels[2:] == data.obs[LABELS].to_numpy()[2:]).mean() > 0.95


def test_a_second_model_clears_the_first_models_columns(trained):
    model, data = trained
    query = data.copy()
    model.predict(query)
    assert "cellformer_unknown" in query.obs  # thresholds were fit on a validation split
    other = _new_linear(trained=True)  # no validation split: no Unknown thresholds
    other.predict(query)
    assert "cellformer_unknown" not in query.obs


def test_predict_leaves_the_train_mode_as_it_was(trained):
    model, data = trained
    model.module.train()
    model.predict(data.copy(), key_prefix=None)
    assert model.module.training
    model.module.eval()


def test_lower_case_unlabelled_category_can_be_named(trained):
    a = relabel(["unknown"] * 5)(fresh())
    LinearClassifier.setup_anndata(a, labels_key=LABELS, unlabeled_category="unknown")
    assert LinearClassifier(a).n_classes == 3


def test_non_integer_small_values_are_used_with_a_warning():
    a = fresh()
    X = dense(a) * np.random.default_rng(0).uniform(0.6, 1.0, a.shape)
    with pytest.warns(UserWarning, match="not log1p of normalised counts"):
        assert cf.pp.check_expression(with_x(a, np.minimum(X, 15))) == "lognorm"


def test_model_from_another_version_warns(trained, caplog, tmp_path):
    model, _ = trained
    model.save(tmp_path / "m")
    import hashlib
    import json

    from cellformer.model.base._files import _canonical

    file = tmp_path / "m" / "model.json"
    saved = json.loads(file.read_text())
    saved["content"]["attr_dict"]["cellformer_version_"] = "9.0.0"  # as a newer release wrote it
    saved["sha256"] = hashlib.sha256(_canonical(saved)).hexdigest()
    file.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        LinearClassifier.load(tmp_path / "m")
    assert "saved by cellformer 9.0.0" in caplog.text and "newer release" in caplog.text


# -- no data loss ------------------------------------------------------------------------------------
def test_train_predict_annotate_never_change_the_users_data(tmp_path):
    ref, query = fresh(seed=1), fresh(seed=2)[:, 5:].copy()
    before = {
        k: (dense(a).copy(), a.layers["counts"].toarray().copy())
        for k, a in (("r", ref), ("q", query))
    }
    cf.tl.annotate(query, reference=ref, labels_key=LABELS, max_epochs=5, progress=False)
    CellTransformer.setup_anndata(ref, labels_key=LABELS, layer="counts")
    model = CellTransformer(ref, d_model=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.predict(query, majority_voting=True)
    for k, a in (("r", ref), ("q", query)):
        np.testing.assert_array_equal(dense(a), before[k][0])
        np.testing.assert_array_equal(a.layers["counts"].toarray(), before[k][1])
    assert ref.obs[LABELS].nunique() == 3


# -- the command line -----------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    fresh(seed=1).write_h5ad(tmp_path / "ref.h5ad")
    fresh(seed=2).write_h5ad(tmp_path / "q.h5ad")
    (tmp_path / "q.csv").write_text("cell,GENE0\nc1,1\n")
    (tmp_path / "dir.h5ad").mkdir()
    return tmp_path


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def annotate(reference="ref.h5ad", query="q.h5ad", out="o.h5ad", labels=LABELS, extra=()):
    """Arguments of ``cellformer annotate`` in the test folder ``t`` (``None`` leaves one out)."""

    def argv(t):
        args = ["annotate", "--query", t / query, "--out", t / out, *extra]
        if reference is not None:
            args += ["--reference", t / reference]
        if labels is not None:
            args += ["--labels-key", labels]
        return args

    return argv


def benchmark(*extra, data="ref.h5ad"):
    return lambda t: ["benchmark", "--data", t / data, *extra]


CLI_ERRORS = [
    ("annotate out = reference", annotate(out="ref.h5ad"), "also an input"),
    ("annotate out = query", annotate(out="q.h5ad"), "also an input"),
    ("annotate out is a directory", annotate(out="."), "is a directory"),
    ("annotate csv query", annotate(query="q.csv"), "not an .h5ad"),
    ("annotate directory as reference", annotate(reference="dir.h5ad"), "is a directory"),
    ("annotate wrong labels key", annotate(labels="celltype"), "Did you mean"),
    ("annotate no reference", annotate(reference=None, labels=None), "--reference and"),
    (
        "annotate model dir without model.json",
        lambda t: annotate(reference=None, labels=None)(t) + ["--model", t / "dir.h5ad"],
        "holds no model.json",
    ),
    (
        "annotate csv output is an input",
        lambda t: annotate()(t) + ["--csv", t / "q.h5ad"],
        "--csv",
    ),
    ("annotate out not .h5ad", annotate(out="o.csv"), ".h5ad file"),
    ("annotate max-epochs 0", annotate(extra=("--max-epochs", "0")), "--max-epochs"),
    (
        "annotate query library key missing",
        annotate(extra=("--query-library-size-key", "total")),
        "library_size_key='total'",
    ),
    ("benchmark folds 1", benchmark("--folds", "1"), "--folds"),
    ("benchmark bad holdout class", benchmark("--holdout-class", "B"), "not a cell type"),
    ("benchmark csv data", benchmark(data="q.csv"), "not an .h5ad"),
    ("benchmark directory data", benchmark(data="dir.h5ad"), "is a directory"),
    ("benchmark wrong labels key", benchmark("--labels-key", "celltype"), "Did you mean"),
    ("benchmark unknown model", benchmark("--models", "svm"), "--models"),
]


@pytest.mark.parametrize(
    "argv, message", [r[1:] for r in CLI_ERRORS], ids=[r[0] for r in CLI_ERRORS]
)
def test_cli_user_errors_exit_2_with_one_line(files, capsys, monkeypatch, argv, message):
    def no_training(*args, **kwargs):
        raise AssertionError("trained before the input was checked")

    monkeypatch.setattr(LinearClassifier, "train", no_training)
    monkeypatch.setattr(CellTransformer, "train", no_training)
    hashes = {p: sha(p) for p in (files / "ref.h5ad", files / "q.h5ad")}
    assert main([str(a) for a in argv(files)]) == 2
    out = capsys.readouterr()
    text = out.out + out.err
    assert message in text and "Traceback" not in text
    assert text.strip().startswith("error:") and len(text.strip().splitlines()) <= 3
    assert {p: sha(p) for p in hashes} == hashes  # input files untouched


# -- downloads ----------------------------------------------------------------------------------------------
def test_garbage_archive_in_the_cache_names_the_file_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLFORMER_DATA_DIR", str(tmp_path))
    (tmp_path / "pbmc3k_filtered_gene_bc_matrices.tar.gz").write_bytes(b"garbage" * 100)
    with pytest.raises(cf.datasets.DownloadError) as info:
        cf.datasets.pbmc3k()
    text = str(info.value)
    assert "pbmc3k_filtered_gene_bc_matrices.tar.gz" in text and "delete it" in text
    assert isinstance(info.value.__cause__, tarfile.ReadError)


def test_offline_pbmc3k_names_every_file_it_needs(tmp_path, monkeypatch):
    from cellformer.datasets import _download

    monkeypatch.setenv("CELLFORMER_DATA_DIR", str(tmp_path))
    for name in ("pbmc3k_filtered_gene_bc_matrices.tar.gz", "pbmc3k_processed.h5ad"):
        entry = _download.REGISTRY[name]
        monkeypatch.setitem(
            _download.REGISTRY,
            name,
            _download.RemoteFile(f"http://127.0.0.1:9/{name}", None, entry.description),
        )
    with pytest.raises(cf.datasets.DownloadError) as info:
        cf.datasets.pbmc3k()
    assert "pbmc3k_filtered_gene_bc_matrices.tar.gz" in str(info.value)
    assert "pbmc3k_processed.h5ad" in str(info.value)


def test_cell_ontology_url_is_a_dated_release():
    from cellformer.datasets import _download

    assert "/releases/20" in _download.REGISTRY["cl-simple.obo"].url


def test_pretrained_encoder_cache_is_keyed_by_the_data():
    from cellformer.bench._models import _fingerprint

    a, b = fresh(seed=1), fresh(seed=2)
    assert _fingerprint(a, None) != _fingerprint(b, None)  # same fold name, same cell count
    assert _fingerprint(a, None) == _fingerprint(a.copy(), None)


@pytest.mark.parametrize("n_empty", [10, 120])
def test_reference_cells_without_the_shared_genes(n_empty, caplog):
    """Trained on the genes a query shares: reference cells that express none of them are left
    out (a few, with a warning) or the panel is refused as too small (many)."""
    ref = fresh(seed=1)
    counts = dense(ref)
    counts[:n_empty, :20] = 0  # these cells express only genes the query lacks
    ref.X = sp.csr_matrix(counts)
    query = fresh(seed=2)[:, :20].copy()
    if n_empty > 0.2 * ref.n_obs:
        with pytest.raises(InputError, match="express none: too few shared genes"):
            cf.tl.annotate(query, reference=ref, labels_key=LABELS, genes="shared", progress=False)
        return
    with caplog.at_level("WARNING", logger="cellformer"):
        cf.tl.annotate(
            query, reference=ref, labels_key=LABELS, genes="shared", max_epochs=5, progress=False
        )
    assert f"{n_empty} reference cells express none of the 20 shared genes" in caplog.text
    assert query.obs["cellformer_prediction"].notna().all()


@pytest.mark.parametrize("cls", ["LinearClassifier", "CellTransformer"])
@pytest.mark.parametrize(
    ("name", "value"), [("max_epochs", 0), ("max_epochs", 2.5), ("batch_size", 0)]
)
def test_training_counts_below_one_are_refused_and_leave_the_model_untrained(cls, name, value):
    data = make_counts()
    model_cls = getattr(cf.model, cls)
    model_cls.setup_anndata(data, labels_key="cell_type")
    model = model_cls(data)
    kwargs = {name: value, "full_batch": False} if cls == "LinearClassifier" else {name: value}
    with pytest.raises(InputError, match=f"{name} must be a whole number of at least 1"):
        model.train(enable_progress_bar=False, **kwargs)
    assert not model.is_trained_


def test_a_query_without_the_library_size_column_is_said_loudly(caplog):
    import logging

    data = make_counts()
    data.obs["total"] = np.asarray(data.X.sum(1)).ravel() * 2.0
    cf.model.LinearClassifier.setup_anndata(data, labels_key="cell_type", library_size_key="total")
    model = cf.model.LinearClassifier(data)
    model.train(enable_progress_bar=False)
    query = data.copy()
    del query.obs["total"]
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        model.predict(query, key_prefix=None)
    assert any(
        "obs['total']" in r.getMessage() and "library_size_key=" in r.getMessage()
        for r in caplog.records
    )


def test_annotate_refuses_paths_and_a_coverage_outside_zero_one():
    data = make_counts(n_cells=60, n_genes=20)
    with pytest.raises(InputError, match=r"reference='ref.h5ad' is a path: .*sc.read_h5ad"):
        cf.tl.annotate(data.copy(), reference="ref.h5ad", labels_key="cell_type", progress=False)
    with pytest.raises(InputError, match=r"query='q.h5ad' is a path"):
        cf.tl.annotate("q.h5ad", reference=data, labels_key="cell_type", progress=False)
    for bad in (2.0, -0.1, "half", True):
        with pytest.raises(
            cf.ParameterError, match=r"min_gene_coverage must be a number in \[0, 1\]"
        ):
            cf.tl.annotate(
                data.copy(),
                reference=data,
                labels_key="cell_type",
                min_gene_coverage=bad,
                progress=False,
            )


@pytest.mark.parametrize(
    ("model_cls", "options", "message"),
    [
        (CellTransformer, {"lr": 1e-3}, r"lr is an option of the training plan.*plan_kwargs="),
        (LinearClassifier, {"lr": 1e-3}, r"lr is an option of the training plan"),
        (CellTransformer, {"max_epoch": 2}, r"unknown option.*did you mean 'max_epochs'"),
        (LinearClassifier, {"batchsize": 8}, r"unknown option.*did you mean 'batch_size'"),
        (CellTransformer, {"plan_kwargs": {"learning_rate": 1e-3}}, r"plan_kwargs has unknown"),
        (CellTransformer, {"plan_kwargs": {"lr": -1.0}}, r"lr must be a positive number"),
        (CellTransformer, {"plan_kwargs": {"weight_decay": -1}}, r"weight_decay must be a non"),
    ],
)
def test_train_names_a_misspelt_or_misplaced_option(model_cls, options, message):
    """Not Lightning's TypeError from deep inside Trainer, nor torch's from the optimiser."""
    data = make_counts(n_cells=60, n_genes=20)
    model_cls.setup_anndata(data, labels_key="cell_type")
    model = model_cls(data)
    with pytest.raises(cf.ParameterError, match=message):
        model.train(enable_progress_bar=False, **options)
    assert not model.is_trained_


def test_train_passes_lightning_options_through():
    data = make_counts(n_cells=60, n_genes=20)
    CellTransformer.setup_anndata(data, labels_key="cell_type")
    model = CellTransformer(data, d_model=16, n_heads=2)
    model.train(
        max_epochs=1,
        enable_progress_bar=False,
        accumulate_grad_batches=2,
        limit_train_batches=1,
        plan_kwargs={"lr": 1e-3, "weight_decay": 0.01},
    )
    assert model.is_trained_


def test_a_cell_type_with_two_cells_is_named_not_scvis_internal_code(caplog, recwarn):
    data = relabel(["rare", "rare"])(fresh())
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        LinearClassifier.setup_anndata(data, labels_key=LABELS)
    assert "fewer than 3 labelled cells" in caplog.text and "'rare' (2)" in caplog.text
    assert not [w for w in recwarn if "_scvi_labels" in str(w.message)]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        LinearClassifier.setup_anndata(fresh(), labels_key=LABELS)
    assert "fewer than 3" not in caplog.text


# -- names users get wrong ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, message",
    [
        ("HF:lab/pbmc", "did you mean 'hf:lab/pbmc'"),
        ("Hf:lab/pbmc", "did you mean 'hf:lab/pbmc'"),
        ("hf:lab/pb mc", r"hf:ORG/NAME\[@REVISION\]"),
        ("hf:lab/-pbmc", r"hf:ORG/NAME\[@REVISION\]"),
        ("hf:lab/pbmc@", r"hf:ORG/NAME\[@REVISION\]"),
        ("hf:lab/pbmc/extra", r"hf:ORG/NAME\[@REVISION\]"),
        ("immune_all_low.pkl", "did you mean 'Immune_All_Low.pkl'"),
        ("Immune_All_Lo.pkl", "did you mean 'Immune_All_Low.pkl'"),
        ("Immune_All_Low.pickle", "did you mean 'Immune_All_Low.pkl'"),
    ],
)
def test_model_names_near_a_real_one_are_suggested_before_any_download(name, message, monkeypatch):
    import cellformer.datasets._download as download

    def no_network(*args, **kwargs):
        raise AssertionError("nothing may be downloaded for a misspelt name")

    monkeypatch.setattr(download, "fetch", no_network)
    with pytest.raises(InputError, match=message):
        cf.tl.annotate(fresh(n_cells=30), model=name, progress=False)


def test_an_id_column_is_not_taken_for_cell_types():
    data = fresh()
    data.obs["barcode"] = [f"AAAC{i:04d}" for i in range(data.n_obs)]
    with pytest.raises(InputError, match="looks like an ID column.*curated cell types"):
        LinearClassifier.setup_anndata(data, labels_key="barcode")


def test_cli_refuses_options_a_trained_model_would_ignore(trained, tmp_path, capsys):
    model, data = trained
    model.save(tmp_path / "m")
    data.write_h5ad(tmp_path / "q.h5ad")
    argv = ["annotate", "--model", str(tmp_path / "m"), "--query", str(tmp_path / "q.h5ad")]
    code = main([*argv, "--out", str(tmp_path / "o.h5ad"), "--labels-key", "cell_type"])
    assert code == 2 and "--labels-key would be ignored" in " ".join(
        capsys.readouterr().out.split()
    )
    assert not (tmp_path / "o.h5ad").exists()


def test_save_model_overwrite_replaces_only_a_saved_model(trained, tmp_path, capsys):
    _, data = trained
    data.write_h5ad(tmp_path / "r.h5ad")
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "figure.png").write_bytes(b"not yours to delete")
    argv = ["annotate", "--reference", str(tmp_path / "r.h5ad"), "--labels-key", LABELS]
    argv += ["--query", str(tmp_path / "r.h5ad"), "--out", str(tmp_path / "o.h5ad")]
    code = main([*argv, "--save-model", str(precious), "--overwrite"])
    assert code != 0 and "not a saved cellformer model" in " ".join(capsys.readouterr().out.split())
    assert (precious / "figure.png").read_bytes() == b"not yours to delete"
    assert not (tmp_path / "o.h5ad").exists()


def test_a_results_only_file_as_a_query_is_named_for_what_it_is(trained, tmp_path, capsys):
    model, data = trained
    data.write_h5ad(tmp_path / "r.h5ad")
    argv = ["annotate", "--reference", str(tmp_path / "r.h5ad"), "--labels-key", LABELS]
    assert (
        main(
            [
                *argv,
                "--query",
                str(tmp_path / "r.h5ad"),
                "--out",
                str(tmp_path / "res.h5ad"),
                "--results-only",
            ]
        )
        == 0
    )
    capsys.readouterr()
    code = main([*argv, "--query", str(tmp_path / "res.h5ad"), "--out", str(tmp_path / "o.h5ad")])
    assert code == 2 and "results-only file" in " ".join(capsys.readouterr().out.split())
    with pytest.raises(InputError, match="results-only file"):
        model.predict(ad.read_h5ad(tmp_path / "res.h5ad"))
