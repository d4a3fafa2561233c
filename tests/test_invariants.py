"""Invariants every entry point keeps, checked on generated inputs (hypothesis).

1. nothing the user owns changes (and output keys the user owns are an error, not overwritten);
2. nothing is overwritten without consent; 3. every AnnData cellformer writes reads back;
4. results do not depend on storage (format, dtype, views, backed files, cell and gene order);
5. parameters are validated where they enter; 6. labels mean what the user meant;
8. training is training (dropout on, whatever mode the module was left in).
Invariants 7 and 9 have their own tests (test_annotate.py, test_cli.py, test_gene_ids.py).
"""

import string

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from helpers import make_counts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cellformer as cf
from cellformer import InputError

FAST = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
MANY = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def trained():
    """A LinearClassifier and a one-epoch CellTransformer on the same synthetic reference."""
    models = {}
    for cls in (cf.model.LinearClassifier, cf.model.CellTransformer):
        reference = make_counts(n_cells=150, n_genes=30)
        cls.setup_anndata(reference, labels_key="cell_type")
        model = cls(reference)
        kwargs = {} if cls is cf.model.LinearClassifier else {"max_epochs": 1}
        model.train(enable_progress_bar=False, **kwargs)
        models[cls.__name__] = model
    query = make_counts(n_cells=42, n_genes=30, seed=5)
    query.obs["cell_type"] = query.obs["cell_type"].astype(str)
    base = {
        name: m.predict(query.copy(), soft=True, key_prefix=None).to_numpy()
        for name, m in models.items()
    }
    return models, query, base


FORMATS = {
    "csr": sp.csr_matrix,
    "csc": sp.csc_matrix,
    "dense": lambda X: X.toarray(),
    "matrix": lambda X: np.asmatrix(X.toarray()),
    "csr_array": sp.csr_array,
}
DTYPES = (np.float32, np.float64, np.int32, np.int64, np.uint16)


@st.composite
def storage_variants(draw):
    return {
        "model": draw(st.sampled_from(["LinearClassifier", "CellTransformer"])),
        "format": draw(st.sampled_from(sorted(FORMATS))),
        "dtype": draw(st.sampled_from(DTYPES)),
        "cells": draw(st.permutations(range(42))),
        "genes": draw(st.permutations(range(30))),
        "extra_genes": draw(st.integers(0, 3)),
        "where": draw(st.sampled_from(["X", "layer"])),
        "view": draw(st.booleans()),
    }


def _build(query: ad.AnnData, v: dict) -> tuple[ad.AnnData, dict]:
    X = query.X.toarray()[np.asarray(v["cells"])][:, np.asarray(v["genes"])]
    names = list(query.var_names[np.asarray(v["genes"])])
    if v["extra_genes"]:  # genes the model lacks, without counts (library sizes unchanged)
        X = np.hstack([X, np.zeros((X.shape[0], v["extra_genes"]))])
        names += [f"EXTRA{i}" for i in range(v["extra_genes"])]
    X = FORMATS[v["format"]](sp.csr_matrix(X.astype(v["dtype"])))
    obs = query.obs.iloc[np.asarray(v["cells"])].copy()
    out = ad.AnnData(obs=obs, var=pd.DataFrame(index=names))
    if v["where"] == "X":
        out.X = X
        layer = None
    else:
        out.layers["counts"] = X
        layer = "counts"
    out.obsm["X_user"] = np.arange(out.n_obs * 2, dtype=float).reshape(-1, 2)
    out.uns["user"] = {"note": "mine"}
    if v["view"]:
        out = out[:]  # a view of all cells
    return out, {"layer": layer}


def _snapshot(adata: ad.AnnData) -> dict:
    X = adata.X if adata.X is not None else adata.layers["counts"]
    return {
        "X": np.asarray(X.todense() if sp.issparse(X) else X).copy(),
        "var": adata.var.copy(),
        "obs": adata.obs.copy(),
        "obsm": {k: np.asarray(v).copy() for k, v in adata.obsm.items()},
        "uns": set(adata.uns),
        "layers": set(adata.layers),
    }


def _unchanged(before: dict, adata: ad.AnnData) -> None:
    after = _snapshot(adata)
    np.testing.assert_array_equal(after["X"], before["X"])
    pd.testing.assert_frame_equal(after["var"], before["var"])
    pd.testing.assert_frame_equal(after["obs"][before["obs"].columns], before["obs"])
    for key, value in before["obsm"].items():
        np.testing.assert_array_equal(after["obsm"][key], value)
    assert before["uns"] <= after["uns"] and after["layers"] == before["layers"]


def check_storage(trained, v):
    models, query, base = trained
    model = models[v["model"]]
    adata, kw = _build(query, v)
    before = _snapshot(adata)
    probs = model.predict(adata, soft=True, key_prefix=None, **kw)
    np.testing.assert_allclose(
        probs.to_numpy(), base[v["model"]][np.asarray(v["cells"])], rtol=1e-4, atol=1e-5
    )
    assert list(probs.index) == list(adata.obs_names)
    _unchanged(before, adata)  # invariant 1: key_prefix=None writes nothing


@FAST
@given(v=storage_variants())
def test_results_do_not_depend_on_storage(trained, v):
    check_storage(trained, v)


@pytest.mark.slow
@MANY
@given(v=storage_variants())
def test_results_do_not_depend_on_storage_many(trained, v):
    check_storage(trained, v)


def test_backed_query_equals_in_memory(trained, tmp_path):
    models, query, base = trained
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    for name, model in models.items():
        probs = model.predict(backed, soft=True, key_prefix=None)
        np.testing.assert_allclose(probs.to_numpy(), base[name], rtol=1e-4, atol=1e-5)
    backed.file.close()


prefixes = st.text(alphabet=string.ascii_letters + string.digits + "_-/ .", max_size=12)


@FAST
@given(prefix=prefixes)
def test_written_keys_read_back_and_user_keys_are_never_overwritten(
    trained, tmp_path_factory, prefix
):
    models, query, _ = trained
    model = models["LinearClassifier"]
    adata = query.copy()
    adata.obs["user_column"] = "mine"
    valid = bool(prefix.strip()) and "/" not in prefix
    if not valid:
        with pytest.raises(InputError, match="key_prefix"):
            model.predict(adata, key_prefix=prefix)
        with pytest.raises(InputError, match="key_prefix"):
            model.get_latent_representation(adata, key_prefix=prefix)
        return
    before = _snapshot(adata)
    model.predict(adata, key_prefix=prefix)
    model.get_latent_representation(adata, key_prefix=prefix)
    model.predict(adata, key_prefix=prefix)  # cellformer's own keys: rewritten freely
    _unchanged(before, adata)
    path = tmp_path_factory.mktemp("prefix") / "a.h5ad"
    adata.write_h5ad(path)  # invariant 3
    back = ad.read_h5ad(path)
    assert f"{prefix}_prediction" in back.obs and f"X_{prefix}" in back.obsm
    # a key of the same name the user wrote is theirs: an error, never overwritten
    theirs = query.copy()
    theirs.obs[f"{prefix}_prediction"] = "the user's"
    with pytest.raises(InputError, match="did not write"):
        model.predict(theirs, key_prefix=prefix)
    assert (theirs.obs[f"{prefix}_prediction"] == "the user's").all()


NAMES = ["B cell", "T cell", "NK cell", "t cell", "T cell ", "Monocyte"]


@st.composite
def label_columns(draw):
    """60 labels: names (some differing only by case or spaces), booleans, numbers or a mix."""
    kind = draw(st.sampled_from(["str", "str", "bool", "int", "mixed"]))
    element = {
        "str": st.sampled_from(NAMES),
        "bool": st.booleans(),
        "int": st.integers(0, 3),
        "mixed": st.one_of(st.sampled_from(NAMES), st.booleans(), st.integers(0, 3)),
    }[kind]
    values = draw(st.lists(element, min_size=60, max_size=60))
    if kind == "mixed" and len({type(v) for v in values}) == 1:
        values[0] = True if isinstance(values[0], str) else "B cell"
    return values


@FAST
@given(values=label_columns(), unused=st.booleans())
def test_labels_mean_what_the_user_meant(values, unused):
    adata = make_counts(n_cells=60, n_genes=20)
    column = pd.Series(values, index=adata.obs_names, dtype=object)
    kinds = {type(v) for v in values}
    all_str = kinds == {str}
    if all_str and unused:
        column = column.astype(pd.CategoricalDtype([*sorted(set(values)), "ghost type"]))
    adata.obs["label"] = column
    strings = [v for v in values if isinstance(v, str)]
    near = {" ".join(v.split()).lower() for v in strings}
    if not all_str:  # booleans, numbers, mixed types: say .astype(str)
        with pytest.raises(InputError, match=r"astype\(str\)"):
            cf.model.LinearClassifier.setup_anndata(adata, labels_key="label")
        return
    if len(set(values)) < 2:
        with pytest.raises(InputError, match="at least 2"):
            cf.model.LinearClassifier.setup_anndata(adata, labels_key="label")
        return
    if len(near) < len(set(strings)):
        with pytest.warns(UserWarning, match="differ only by case or spaces"):
            cf.model.LinearClassifier.setup_anndata(adata, labels_key="label")
    else:
        cf.model.LinearClassifier.setup_anndata(adata, labels_key="label")
    model = cf.model.LinearClassifier(adata)
    assert sorted(model.classes) == sorted(set(values))  # no 0-cell class
    assert adata.obs["label"].astype(str).tolist() == [str(v) for v in values]


@FAST
@given(
    batch_size=st.one_of(st.integers(-2, 300), st.floats(-1, 10), st.booleans()),
    mc=st.one_of(st.none(), st.integers(-1, 3)),
)
def test_parameters_are_validated_where_they_enter(trained, batch_size, mc):
    models, query, _ = trained
    model = models["CellTransformer"]
    ok = isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size >= 1
    ok = ok and (mc is None or mc >= 1)
    if not ok:
        with pytest.raises(cf.ParameterError if mc is not None and mc < 1 else InputError):
            model.predict(query.copy(), batch_size=batch_size, mc_samples=mc, key_prefix=None)
        return
    probs = model.predict(query.copy(), soft=True, batch_size=batch_size, mc_samples=mc)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    d_model=st.integers(-1, 9),
    n_heads=st.integers(-1, 4),
    dropout=st.floats(-0.5, 1.5),
    unknown_rate=st.floats(-0.5, 1.5),
)
def test_architecture_and_training_parameters(d_model, n_heads, dropout, unknown_rate):
    adata = make_counts(n_cells=30, n_genes=8)
    cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
    valid = d_model >= 1 and n_heads >= 1 and 0 <= dropout < 1
    if not valid:
        with pytest.raises(InputError, match="d_model|n_heads|dropout"):
            cf.model.CellTransformer(adata, d_model=d_model, n_heads=n_heads, dropout=dropout)
        return
    if d_model % n_heads:
        with pytest.raises(InputError, match="must divide"):
            cf.model.CellTransformer(adata, d_model=d_model, n_heads=n_heads, dropout=dropout)
        return
    model = cf.model.CellTransformer(adata, d_model=d_model, n_heads=n_heads, dropout=dropout)
    if not 0 <= unknown_rate <= 1:
        with pytest.raises(InputError, match="unknown_rate"):
            model.train(max_epochs=1, unknown_rate=unknown_rate, enable_progress_bar=False)
        assert not model.is_trained_


def test_training_is_training_whatever_mode_the_module_was_left_in(trained):
    adata = make_counts(n_cells=60, n_genes=20)
    cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = cf.model.CellTransformer(adata, dropout=0.3)
    model.module.eval()  # as a checkpoint reader or a user's eval() leaves it
    seen = []
    loss = model.module.loss

    def recording(*args, **kwargs):
        seen.append(model.module.training)
        return loss(*args, **kwargs)

    model.module.loss = recording
    model.train(max_epochs=1, validation_size=0.0, enable_progress_bar=False)
    assert seen and all(seen)
    model.predict(adata)  # inference in eval mode, then back
    seen.clear()
    model.train(max_epochs=1, validation_size=0.0, enable_progress_bar=False)
    assert seen and all(seen)


def test_nothing_is_overwritten_without_consent(trained, tmp_path):
    models, query, _ = trained
    model = models["LinearClassifier"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(cf.OverwriteError, match="is a file"):
        model.save(tmp_path / "file")
    model.save(tmp_path / "m")
    with pytest.raises(cf.OverwriteError, match="overwrite=True"):
        model.save(tmp_path / "m")
    model.save(tmp_path / "m", overwrite=True)
    reference = make_counts(n_cells=90, n_genes=30)
    with pytest.raises(cf.OverwriteError, match="overwrite=True"):
        cf.tl.annotate(
            query.copy(), reference=reference, labels_key="cell_type", save_model=tmp_path / "m"
        )
    assert isinstance(cf.OverwriteError("x"), FileExistsError)
    assert issubclass(cf.InputError, cf.CellformerError) and issubclass(cf.InputError, ValueError)


def test_the_reference_model_prints_no_third_party_warnings():
    """Invariant 10: the main job's scikit-learn baseline is quiet on new scikit-learn too."""
    import warnings

    from cellformer.bench._models import SklearnLogisticRegression

    adata = make_counts(n_cells=90, n_genes=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = SklearnLogisticRegression().fit(adata, "cell_type")
    assert (model.predict(adata) == adata.obs["cell_type"].to_numpy()).mean() > 0.9


def test_loading_a_model_does_not_log_scvi_download_lines(trained, tmp_path):
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("scvi.data._download")
    logger.addHandler(handler)
    try:
        models, _, _ = trained
        models["LinearClassifier"].save(tmp_path / "m")
        cf.model.LinearClassifier.load(tmp_path / "m")
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "already downloaded" in r.getMessage()]


# -- 10. no model file runs code when read; damaged files are named --------------------------------
class _Marker:
    """Unpickling this runs code: it creates the file ``path`` (a stand-in for anything worse)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').close()",))


def _linear_folder(tmp_path):
    reference = make_counts(n_cells=120, n_genes=25)
    cf.model.LinearClassifier.setup_anndata(reference, labels_key="cell_type")
    model = cf.model.LinearClassifier(reference)
    model.train(enable_progress_bar=False)
    model.save(tmp_path / "saved")
    return model, reference, tmp_path / "saved"


def _loaders(tmp_path, marker):
    """(name, function that reads a file a stranger made, expected error) for every loader."""
    import pickle

    import torch

    query = make_counts(n_cells=30, n_genes=25, seed=3)
    evil = {"attr_dict": {"registry_": {"model_name": "LinearClassifier"}}, "x": _Marker(marker)}
    legacy = tmp_path / "legacy"  # a saved folder in the older layout, with code in model.pt
    legacy.mkdir()
    torch.save(evil, legacy / "model.pt")
    pkl = tmp_path / "evil.pkl"  # a CellTypist model whose classifier is code
    pkl.write_bytes(pickle.dumps({"Model": _Marker(marker), "Scaler_": None, "description": {}}))
    encoder = tmp_path / "encoder"  # a pretrained encoder of the older layout
    encoder.mkdir()
    torch.save({"genes": ["a"], "x": _Marker(marker)}, encoder / "encoder.pt")
    scbert = tmp_path / "panglao_pretrain.pth"
    torch.save({"model_state_dict": {}, "x": _Marker(marker)}, scbert)
    out = tmp_path / "out.h5ad"
    q = tmp_path / "q.h5ad"
    query.write_h5ad(q)
    labelled = make_counts(n_cells=30, n_genes=25)
    return [
        ("saved folder: load", lambda: cf.model.LinearClassifier.load(legacy)),
        ("saved folder: annotate", lambda: cf.tl.annotate(query.copy(), model=str(legacy))),
        ("CellTypist pickle", lambda: cf.model.LinearClassifier.from_celltypist(pkl)),
        ("CellTypist via annotate", lambda: cf.tl.annotate(query.copy(), model=str(pkl))),
        (
            "CLI --model pickle",
            lambda: cli(["annotate", "--model", str(pkl), "--query", str(q), "--out", str(out)]),
        ),
        (
            "CLI --model folder",
            lambda: cli(["annotate", "--model", str(legacy), "--query", str(q), "--out", str(out)]),
        ),
        (
            "pretrained encoder",
            lambda: cf.model.CellTransformer.from_pretrained(encoder, labelled, "cell_type"),
        ),
        (
            "scBERT checkpoint",
            lambda: cf.model.CellTransformer.from_pretrained(scbert, labelled, "cell_type"),
        ),
    ]


def cli(argv):
    from cellformer.cli import main

    code = main(argv)
    if code != 0:
        raise cf.CellformerError(f"exit {code}")
    return code


def test_no_loader_runs_the_code_a_file_holds(tmp_path):
    marker = tmp_path / "MARKER"
    _Marker(marker).__reduce__()[0](*_Marker(marker).__reduce__()[1])  # the marker works ...
    assert marker.exists()
    marker.unlink()  # ... and is gone again
    for name, load in _loaders(tmp_path, marker):
        with pytest.raises(cf.CellformerError):
            load()
        assert not marker.exists(), f"{name}: the file's code ran"


def test_loaders_refuse_code_as_unsafe_with_the_way_out(tmp_path):
    marker = tmp_path / "MARKER"
    for name, load in _loaders(tmp_path, marker):
        if name.startswith("CLI"):
            continue
        with pytest.raises(cf.UnsafeFileError) as info:
            load()
        message = str(info.value)
        assert "trust=True" in message or "was not read" in message, (name, message)


def test_a_hub_cache_that_holds_code_is_not_run(tmp_path, offline_hf_cache):
    import pickle

    import torch
    from helpers import fill_hf_cache

    marker = tmp_path / "MARKER"
    query = make_counts(n_cells=30, n_genes=25, seed=3)
    payload = pickle.dumps({"Model": _Marker(marker), "Scaler_": None})
    fill_hf_cache(offline_hf_cache, "lab/pickle", {"model.pkl": payload})
    buffer = tmp_path / "model.pt"
    torch.save({"attr_dict": {}, "x": _Marker(marker)}, buffer)
    fill_hf_cache(offline_hf_cache, "lab/legacy", {"model.pt": buffer.read_bytes()})
    for repo in ("lab/pickle", "lab/legacy"):
        with pytest.raises(cf.UnsafeFileError, match="trust=True"):
            cf.tl.annotate(query.copy(), model=f"hf:{repo}", progress=False)
        assert not marker.exists()


def test_geneformer_dictionaries_are_read_without_running_code(tmp_path):
    import json
    import pickle

    pytest.importorskip("transformers")
    marker = tmp_path / "MARKER"
    checkpoint = tmp_path / "gf"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text(json.dumps({"model_type": "bert"}))
    evil = tmp_path / "token_dictionary.pkl"
    evil.write_bytes(pickle.dumps({"<pad>": 0, "ENSG1": _Marker(marker)}))
    with pytest.raises(cf.UnsafeFileError, match="builtins.exec"):
        cf.model.GeneformerClassifier.from_pretrained(
            checkpoint, make_counts(n_cells=30, n_genes=25), "cell_type", token_dictionary=evil
        )
    assert not marker.exists()


def test_a_safe_folder_ignores_a_stray_pickle_and_loads_without_trust(tmp_path):
    import torch

    marker = tmp_path / "MARKER"
    model, reference, folder = _linear_folder(tmp_path)
    torch.save({"x": _Marker(marker)}, folder / "model.pt")  # dropped in by someone else
    loaded = cf.model.LinearClassifier.load(folder)
    assert not marker.exists()
    np.testing.assert_array_equal(
        loaded.predict(reference.copy(), soft=True, key_prefix=None),
        model.predict(reference.copy(), soft=True, key_prefix=None),
    )


@pytest.mark.parametrize("name", ["model.safetensors", "model.json"])
def test_one_flipped_byte_is_found_and_the_file_named(tmp_path, name):
    _, _, folder = _linear_folder(tmp_path)
    file = folder / name
    data = bytearray(file.read_bytes())
    # inside the tensor data (the end of the file) or inside a number of the JSON
    at = len(data) - 5 if name.endswith("safetensors") else data.index(b'"n_obs": ') + 10
    data[at] = (data[at] + 1) % 256 if name.endswith("safetensors") else ord("7")
    file.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"{name}' is damaged"):
        cf.model.LinearClassifier.load(folder)


def test_non_finite_weights_are_an_error_at_load(tmp_path):
    import torch

    model, _, folder = _linear_folder(tmp_path)
    with torch.no_grad():
        model.module.linear.weight[0, 0] = float("nan")
    model.save(folder, overwrite=True)
    with pytest.raises(InputError, match=r"NaN or infinite parameters \(linear.weight\)"):
        cf.model.LinearClassifier.load(folder)


def test_overwrite_replaces_only_a_saved_model(tmp_path):
    model, _, folder = _linear_folder(tmp_path)
    model.save(folder, overwrite=True)  # a saved model: replaced
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "chapter1.tex").write_text("years of work")
    with pytest.raises(cf.OverwriteError, match="not a saved cellformer model"):
        model.save(other, overwrite=True)
    assert (other / "chapter1.tex").read_text() == "years of work"


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers(-(2**62), 2**62)
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(
                st.text(max_size=6) | st.integers(0, 9) | st.floats(0, 1), inner, max_size=4
            )
        ),
        max_leaves=20,
    )
)
@FAST
def test_the_json_codec_round_trips_what_models_keep(value):
    from cellformer.model.base._files import decode, encode

    arrays = {}
    import json

    text = json.dumps(encode(value, arrays), allow_nan=False)
    back = decode(json.loads(text), arrays)
    assert _same(back, value)


def _same(a, b):
    if isinstance(b, float) and np.isnan(b):
        return isinstance(a, float) and np.isnan(a)
    if isinstance(b, dict):
        return type(a) is type(b) and list(a) == list(b) and all(_same(a[k], b[k]) for k in b)
    if isinstance(b, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    return type(a) is type(b) and a == b


# -- 5b. every options mapping is checked at the door, by its schema -------------------------------
WRONG = st.sampled_from(["2", "yes", float("nan"), [1], {"a": 1}, object()])


@given(
    field=st.sampled_from(
        [
            "n_bins",
            "max_length",
            "train_max_length",
            "n_hvg",
            "drop_zeros",
            "cls_token",
            "previous_share",
        ]
    ),
    value=WRONG,
)
@FAST
def test_tokenizer_options_of_a_wrong_type_are_refused(field, value):
    with pytest.raises(cf.ParameterError, match=field):
        cf.tokenizers.get_config({field: value})


@given(
    field=st.sampled_from(
        ["d_model", "n_layers", "dropout", "attention", "token_norm", "head", "prior_sigma"]
    ),
    value=WRONG,
)
@FAST
def test_encoder_options_of_a_wrong_type_are_refused(field, value):
    with pytest.raises(cf.ParameterError, match=field):
        cf.nn.get_encoder_config({field: value})


@given(field=st.sampled_from(["rounds", "share", "layer", "library_size_key"]), value=WRONG)
@FAST
def test_adapt_options_of_a_wrong_type_are_refused_before_anything_changes(field, value):
    reference = make_counts(n_cells=60, n_genes=20)
    query = make_counts(n_cells=21, n_genes=20, seed=4)
    cf.model.LinearClassifier.setup_anndata(reference, labels_key="cell_type")
    model = cf.model.LinearClassifier(reference)
    before = reference.obs.copy()
    with pytest.raises(InputError) as info:  # a wrong type, or a string naming nothing
        model.train(unlabeled=query, adapt_options={field: value})
    assert field in str(info.value) or "Layer '2'" in str(info.value)
    assert not model.is_trained_ and model.adata is reference
    pd.testing.assert_frame_equal(reference.obs, before)


@given(field=st.sampled_from(["lr", "weight_decay"]), value=WRONG)
@FAST
def test_plan_options_of_a_wrong_type_are_refused(trained, field, value):
    models, _, _ = trained
    model = models["CellTransformer"]
    weights = {k: v.clone() for k, v in model.module.state_dict().items()}
    with pytest.raises(cf.ParameterError, match=field):
        model.train(max_epochs=1, plan_kwargs={field: value}, enable_progress_bar=False)
    for key, value in model.module.state_dict().items():
        assert (value == weights[key]).all() or value.isnan().all()


@pytest.mark.parametrize(
    "option",
    [{"mc_samples": 2.5}, {"ontology_threshold": float("nan")}, {"ontology_mass": float("nan")}],
)
def test_float_and_count_options_of_predict_refuse_nan_and_fractions(trained, option):
    models, query, _ = trained
    q = query.copy()
    with pytest.raises(cf.ParameterError, match=next(iter(option))):
        models["LinearClassifier"].predict(q, ontology="ontology_mass" in option or None, **option)
    assert "cellformer_prediction" not in q.obs


# -- 11. every error cellformer raises on purpose is a CellformerError ------------------------------
#: Builtin exceptions that stay builtin, and why: a json ``default`` must raise TypeError; an
#: assertion of the code's own invariant; abstract methods; module ``__getattr__``.
BUILTIN_RAISES_KEPT = {
    ("bench/_run.py", "TypeError"),  # json.dumps(default=...) protocol
    ("model/_scgpt.py", "RuntimeError"),  # pragma: no cover, names built from the module
}


def test_every_deliberate_error_is_a_cellformer_error():
    import ast
    import builtins
    from pathlib import Path

    src = Path(cf.__file__).parent
    found = []
    for path in sorted(src.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Raise) or node.exc is None:
                continue
            call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            name = getattr(call, "id", None)
            if name is None or not isinstance(getattr(builtins, name, None), type):
                continue
            if name in ("NotImplementedError", "AttributeError", "StopIteration"):
                continue
            where = (str(path.relative_to(src)), name)
            if where not in BUILTIN_RAISES_KEPT:
                found.append(f"{where[0]}:{node.lineno} raises {name}")
    assert found == []
