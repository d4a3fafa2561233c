"""CellTransformer: the scvi-tools model API, presets, alignment, MuData, errors, learning."""

import logging

import mudata as md
import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_token_table, make_counts, train_linear

from cellformer import InputError
from cellformer.bench import cross_validate, parse_models
from cellformer.model import CellTransformer

TINY = {"d_model": 16, "n_heads": 2}


def trained(adata, epochs=4, setup=None, **kwargs):
    CellTransformer.setup_anndata(adata, labels_key="cell_type", **(setup or {}))
    model = CellTransformer(adata, **{**TINY, **kwargs})
    model.train(
        max_epochs=epochs, enable_progress_bar=False, batch_size=32, plan_kwargs={"lr": 5e-3}
    )
    return model


@pytest.fixture(scope="module")
def model_and_data():
    adata = make_counts(n_cells=150, n_genes=30)
    return trained(adata, epochs=10), adata


def test_predict_and_latent_write_anndata_keys(model_and_data):
    model, adata = model_and_data
    labels = model.predict()
    assert labels.shape == (adata.n_obs,)
    assert list(adata.obs["cellformer_prediction"].cat.categories) == model.classes
    conf = adata.obs["cellformer_confidence"].to_numpy()
    assert np.all((conf > 0) & (conf <= 1))
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 16)
    np.testing.assert_array_equal(adata.obsm["X_cellformer"], z)
    probs = model.predict(soft=True, key_prefix=None)
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)
    assert (labels == adata.obs["cell_type"].to_numpy()).mean() > 0.9  # an easy synthetic task


def test_save_load_round_trip_identical(model_and_data, tmp_path):
    model, adata = model_and_data
    probs = model.predict(soft=True, key_prefix=None)
    z = model.get_latent_representation(key_prefix=None)
    model.save(tmp_path / "m")
    query = adata.copy()
    del query.obs["cell_type"]
    loaded = CellTransformer.load(tmp_path / "m", adata=query)
    pd.testing.assert_frame_equal(loaded.predict(soft=True, key_prefix=None), probs)
    np.testing.assert_array_equal(loaded.get_latent_representation(key_prefix=None), z)
    # tokenizer statistics travel with the model
    torch.testing.assert_close(loaded.tokenizer.median, model.tokenizer.median)
    assert loaded.tokenizer.config == model.tokenizer.config


def test_inference_in_length_sorted_passes_equals_one_pass(model_and_data, monkeypatch):
    model, adata = model_and_data
    one_pass = model.get_latent_representation(key_prefix=None)
    probs = model.predict(soft=True, key_prefix=None).to_numpy()
    monkeypatch.setattr(model, "inference_pass_cells", 16)  # 150 cells: 10 passes
    calls = []
    inference = model.module.inference
    monkeypatch.setattr(
        model.module, "inference", lambda x, **kw: calls.append(len(x)) or inference(x, **kw)
    )
    np.testing.assert_allclose(
        model.get_latent_representation(key_prefix=None), one_pass, atol=1e-5
    )
    np.testing.assert_allclose(model.predict(soft=True, key_prefix=None), probs, atol=1e-5)
    assert max(calls) == 16 and len(calls) >= 20


def test_training_steps_see_at_most_train_max_length_tokens():
    adata = make_counts(n_cells=60, n_genes=40, seed=1)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, tokenizer={"preset": "default", "train_max_length": 5}, **TINY)
    model._fit_training_statistics(np.arange(60))
    x = torch.log1p(torch.as_tensor(adata.X.toarray()))
    model.module.train()
    assert int(model.module.tokens(x).gene_mask.sum(1).max()) == 5
    model.module.eval()
    assert (
        model.module.tokens(x).gene_mask.sum(1).tolist() == (adata.X.toarray() > 0).sum(1).tolist()
    )


def test_shuffled_genes_give_identical_tokens_and_predictions(model_and_data):
    model, adata = model_and_data
    ref = model.tokenize(adata)
    perm = np.random.default_rng(0).permutation(adata.n_vars)
    shuffled = adata[:, perm].copy()
    tok = model.tokenize(shuffled)
    for key in ("ids", "values", "padding_mask"):
        np.testing.assert_array_equal(tok[key], ref[key])
    np.testing.assert_array_equal(model.predict(shuffled, key_prefix=None), model.predict())


def test_missing_genes_keep_the_tokens_of_shared_genes(caplog):
    import scanpy as sc

    adata = make_counts(n_cells=60, n_genes=30)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)  # log-normalised input: the shared genes' values do not depend on the rest
    model = trained(adata, epochs=1)
    ref = model.tokenize(adata)
    dropped = set(adata.var_names[[3, 7, 11]])
    partial = adata[:, [g for g in adata.var_names if g not in dropped]].copy()
    with caplog.at_level(logging.WARNING, logger="cellformer"):
        tok = model.tokenize(partial)
    assert "covers 90.0%" in caplog.text and "GENE7" in caplog.text  # coverage reported
    for cell in range(adata.n_obs):
        keep = ~np.isin(ref["tokens"][cell], [*dropped, "<pad>"])
        got = tok["tokens"][cell] != "<pad>"
        np.testing.assert_array_equal(tok["tokens"][cell][got], ref["tokens"][cell][keep])
        np.testing.assert_array_equal(tok["values"][cell][got], ref["values"][cell][keep])


def test_no_overlapping_genes_is_a_clear_error(model_and_data):
    model, adata = model_and_data
    other = adata.copy()
    other.var_names = [f"OTHER{i}" for i in range(other.n_vars)]
    with pytest.raises(InputError, match="genes"):
        model.predict(other)


@pytest.mark.slow
def test_seed_makes_training_deterministic():
    a, b = (trained(make_counts(n_cells=90, n_genes=20), epochs=2) for _ in range(2))
    state_b = b.module.state_dict()
    for name, p in a.module.state_dict().items():
        torch.testing.assert_close(p, state_b[name], msg=name)


@pytest.mark.slow
def test_early_stopping_waits_at_least_a_number_of_steps_on_small_data():
    """On 81 training cells an epoch is 2 steps: 8 epochs of patience would be 16 steps."""
    from lightning.pytorch.callbacks import EarlyStopping

    adata = make_counts(n_cells=90, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    patience = {}
    for floor in (60, 0):
        model = CellTransformer(adata, d_model=16, n_heads=2)
        model.min_patience_steps = floor
        model.train(max_epochs=2, batch_size=64, early_stopping=True, enable_progress_bar=False)
        (stopper,) = [c for c in model.trainer.callbacks if isinstance(c, EarlyStopping)]
        patience[floor] = stopper.patience
    assert patience == {60: 30, 0: 8}


@pytest.mark.parametrize("preset", ["geneformer", "scgpt", "scbert"])
def test_presets_train_and_predict(preset):
    adata = make_counts(n_cells=90, n_genes=20)
    model = trained(adata, epochs=2, tokenizer=preset)
    assert model.tokenizer.config.order == ("rank" if preset == "geneformer" else "fixed")
    assert model.predict(key_prefix=None).shape == (90,)
    from cellformer.tokenizers import PRESETS

    expected = PRESETS[preset]  # the repr describes the preset's composition
    for key in ("order", "expression", "max_length"):
        assert f"{key}={expected[key]}" in repr(model), (key, repr(model))


def test_options_cls_pooling_concat_and_table_embeddings():
    adata = make_counts(n_cells=90, n_genes=20)
    table = pd.DataFrame(np.random.default_rng(0).normal(size=(15, 32)), index=adata.var_names[:15])
    model = trained(
        adata,
        epochs=2,
        tokenizer={"preset": "default", "reduce": "concat", "max_length": 8},
        pooling="cls",
        gene_embeddings=table,
        freeze_gene_embeddings=True,
    )
    assert model.tokenizer.config.gene_encoder == "table"
    assert model.tokenize(adata)["ids"].shape == (90, 9)  # <cls> + 8 gene tokens
    assert model.predict(key_prefix=None).shape == (90,)


def test_batch_context_tokens():
    adata = make_counts(n_cells=90, n_genes=20)
    adata.obs["batch"] = pd.Categorical(np.tile(["a", "b", "c"], 30))
    model = trained(
        adata, epochs=2, setup={"batch_key": "batch"}, tokenizer={"context": ("batch",)}
    )
    table = model.tokenize(adata)
    assert_token_table(table, adata)
    tokens = table["tokens"]
    np.testing.assert_array_equal(tokens[:3, 1], ["<batch:0>", "<batch:1>", "<batch:2>"])
    with pytest.raises(InputError, match="batch_key"):
        CellTransformer.setup_anndata(adata, labels_key="cell_type")
        CellTransformer(adata, tokenizer={"context": ("batch",)})


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"tokenizer": "scfoundation"}, ValueError, "Unknown tokenizer preset"),
        ({"tokenizer": {"max_length": 0}}, ValueError, "max_length must be at least 1"),
        ({"d_model": 30, "n_heads": 4}, ValueError, "must divide"),
        ({"pooling": "max"}, ValueError, "pooling"),
        ({"attention": "flash"}, ValueError, "Unknown attention"),
        ({"attention": "performer", "attention_options": {"k": 4}}, ValueError, "attention_opt"),
    ],
)
def test_bad_model_options_are_clear_errors(counts_adata, kwargs, error, message):
    CellTransformer.setup_anndata(counts_adata, labels_key="cell_type")
    with pytest.raises(error, match=message):
        CellTransformer(counts_adata, **kwargs)


@pytest.mark.parametrize("attention", ["knn", "performer"])
def test_long_sequence_attention_trains_saves_and_loads(attention, tmp_path):
    """Every gene a token (scBERT preset) with sparse / linear attention; state travels."""
    adata = make_counts(n_cells=120, n_genes=40)
    model = trained(
        adata, epochs=6, tokenizer="scbert", attention=attention, attention_options=None
    )
    assert model.module.pooling == "genes"  # the default readout when every gene is a token
    assert model.tokenize(adata)["ids"].shape == (120, 41)  # <cls> + every gene, zeros too
    probs = model.predict(soft=True, key_prefix=None)
    assert (probs.idxmax(axis=1) == adata.obs["cell_type"].to_numpy()).mean() > 0.9
    model.max_inference_tokens = 41 * 7  # long sequences: fewer cells per forward pass
    assert model._inference_batch_size(1024) == 7
    pd.testing.assert_frame_equal(model.predict(soft=True, key_prefix=None), probs)
    model.save(tmp_path / "m")
    loaded = CellTransformer.load(tmp_path / "m", adata=adata.copy())
    pd.testing.assert_frame_equal(loaded.predict(soft=True, key_prefix=None), probs)
    if attention == "knn":
        graph = model.module.gene_graph.neighbours
        assert graph.shape == (40, 1 + 3 * 8)
        torch.testing.assert_close(loaded.module.gene_graph.neighbours, graph)
        assert (graph[:, 1:] >= 0).any()  # the graph was fit, not left at self-loops
    else:
        kernel = model.module.encoder.layers[0].attn.kernel
        loaded_kernel = loaded.module.encoder.layers[0].attn.kernel
        torch.testing.assert_close(loaded_kernel.projection, kernel.projection)


def test_gene_readout_pooling_ignores_token_order():
    """pooling='genes' places each token's score at its gene: token order does not matter."""
    import dataclasses

    adata = make_counts(n_cells=45, n_genes=24)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, tokenizer={"order": "fixed"}, pooling="genes", **TINY)
    model.train(max_epochs=1, enable_progress_bar=False)
    module = model.module.eval()
    x = torch.log1p(torch.as_tensor(adata.X[:8].toarray(), dtype=torch.float32))
    z_fixed = module.encode(x)
    tokenizer = module.tokenizer
    tokenizer.config = dataclasses.replace(tokenizer.config, order="random")
    torch.testing.assert_close(module.encode(x), z_fixed, atol=1e-5, rtol=1e-5)
    module.readout["genes"].weight.data[:, 3] += torch.randn(16)  # a gene's own weights
    assert not torch.allclose(module.encode(x), z_fixed)


def test_knn_graph_is_fit_on_training_cells_only():
    adata = make_counts(n_cells=120, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, attention="knn", **TINY)
    model.train(max_epochs=1, enable_progress_bar=False, validation_size=0.25)
    from cellformer.pp import gene_knn_graph

    everything = gene_knn_graph(adata.X, "counts", k=8, max_degree=24)
    assert not np.array_equal(model.module.gene_graph.neighbours.numpy(), everything)


def test_mudata_input():
    rna = make_counts(n_cells=90, n_genes=20)
    labels = rna.obs[["cell_type"]].copy()
    del rna.obs["cell_type"]
    mdata = md.MuData({"rna": rna})
    mdata.obs["cell_type"] = labels["cell_type"]
    CellTransformer.setup_mudata(mdata, labels_key="cell_type", modalities={"rna_layer": "rna"})
    model = CellTransformer(mdata, **TINY)
    model.train(max_epochs=2, enable_progress_bar=False, batch_size=32)
    pred = model.predict(mdata)
    assert pred.shape == (90,)
    assert "cellformer_prediction" in mdata["rna"].obs
    assert model.get_latent_representation(mdata).shape == (90, 16)
    with pytest.raises(InputError, match="modality"):
        CellTransformer.setup_mudata(mdata, labels_key="cell_type", modalities={"rna_layer": "x"})


@pytest.mark.slow
@pytest.mark.parametrize("linear_path", [True, False], ids=["default", "pure"])
def test_real_pbmc_latent_transfers_labels_as_well_as_the_linear_model(pbmc68k, linear_path):
    """Issue 19 #13: 5-NN label transfer on the latent of held-out cells, default settings."""
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split
    from sklearn.neighbors import KNeighborsClassifier

    adata = pbmc68k.copy()
    y = adata.obs["cell_type"].astype(str).to_numpy()
    train, test = train_test_split(
        np.arange(adata.n_obs), test_size=0.3, random_state=0, stratify=y
    )
    adata.obs["lab"] = np.where(np.isin(np.arange(adata.n_obs), train), y, "Unknown")
    linear = train_linear(adata, labels_key="lab")
    linear_accuracy = (linear.predict(key_prefix=None)[test] == y[test]).mean()
    CellTransformer.setup_anndata(adata, labels_key="lab")
    model = CellTransformer(adata, linear_path=linear_path)
    model.train(enable_progress_bar=False)
    z = model.get_latent_representation(key_prefix=None)
    knn = KNeighborsClassifier(5).fit(z[train], y[train])
    assert (knn.predict(z[test]) == y[test]).mean() >= 0.9 * linear_accuracy
    pred = model.predict(key_prefix=None)[test]
    majority = pd.Series(y[test]).value_counts(normalize=True).iloc[0]
    assert (pred == y[test]).mean() > majority + 0.35
    assert f1_score(y[test], pred, average="macro") > 0.55
    assert len(set(pred)) >= 6  # no collapse onto a few classes


@pytest.mark.slow
def test_benchmark_runs_transformer_presets_on_the_same_folds():
    adata = make_counts(n_cells=90, n_genes=20)
    models = parse_models("linear,transformer:scgpt")
    assert models["transformer:scgpt"] == {"model": "transformer", "tokenizer": "scgpt"}
    for name in models:
        models[name] = {**models[name], "max_epochs": 3} if name == "linear" else models[name]
    models["transformer:scgpt"].update({**TINY, "train": {"max_epochs": 2}})
    results = cross_validate(adata, "cell_type", models=models, n_folds=2, progress=False)
    ok = results[results.model != "majority"]
    assert ok["error"].isna().all(), ok["error"].tolist()
    assert set(ok.model) == {"linear", "transformer:scgpt"}
    assert (ok["n_params"] > 0).all() and (ok["predict_cells_per_s"] > 0).all()
    assert ok["ece"].between(0, 1).all() and (ok["nll"] > 0).all()  # from the probabilities
    with pytest.raises(ValueError, match="Unknown tokenizer preset"):
        parse_models("transformer:nope")


@pytest.mark.slow
def test_latent_of_the_default_model_learns_cell_types_even_when_the_linear_path_wins():
    """The encoder trains through an auxiliary head; a zero head keeps the linear predictions."""
    from sklearn.neighbors import KNeighborsClassifier

    adata = make_counts(n_cells=300, n_genes=60, seed=4)
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    train = np.arange(300) % 3 != 0
    adata.obs["lab"] = np.where(train, labels, "Unknown")
    CellTransformer.setup_anndata(adata, labels_key="lab")
    model = CellTransformer(adata, d_model=16, seed=0)
    assert model.module.aux_head is not None
    # when no epoch beats the starting (linear) predictions, only the zero head is restored
    from types import SimpleNamespace

    from cellformer.train import RestoreBestWeights

    start = {k: v.clone() for k, v in model.module.state_dict().items()}
    callback = RestoreBestWeights(initial=True, initial_keys=("head.",))
    callback.best_epoch, callback._state = -1, start
    with torch.no_grad():
        for p in model.module.parameters():
            p.add_(0.1)  # "training"
    callback.on_train_end(None, SimpleNamespace(module=model.module))
    after = model.module.state_dict()
    assert all(torch.equal(after[k], start[k]) for k in start if k.startswith("head."))
    assert not torch.equal(after["aux_head.weight"], start["aux_head.weight"])
    assert not any(torch.equal(after[k], start[k]) for k in start if k.startswith("encoder."))
    with torch.no_grad():  # diverged weights: everything is restored
        next(model.module.encoder.parameters()).fill_(float("nan"))
    callback.on_train_end(None, SimpleNamespace(module=model.module))
    restored = model.module.state_dict()
    assert all(
        torch.allclose(restored[k], v, rtol=0, atol=0, equal_nan=True)
        if v.is_floating_point()
        else torch.equal(restored[k], v)
        for k, v in start.items()
    )
    # and with normal training the latent transfers labels as well as the predictions do
    model = CellTransformer(adata, d_model=16, seed=0)
    model.train(max_epochs=30, enable_progress_bar=False)
    z = model.get_latent_representation(key_prefix=None)
    knn = KNeighborsClassifier(5).fit(z[train], labels[train])
    acc = (knn.predict(z[~train]) == labels[~train]).mean()
    pred = (model.predict(key_prefix=None)[~train] == labels[~train]).mean()
    assert acc >= 0.9 * pred and acc > 0.9


def test_linear_path_chooses_C_once_and_refits_on_all_labels_with_it(monkeypatch):
    from cellformer._core import lbfgs as _lbfgs
    from cellformer.model import LinearClassifier

    calls = []
    choose = _lbfgs.choose_C

    def spy(*args, **kwargs):
        calls.append(len(args[1]))
        return choose(*args, **kwargs)

    monkeypatch.setattr(_lbfgs, "choose_C", spy)
    adata = make_counts(n_cells=120, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert calls == [108]  # once, on the training split (90% of 120 cells)
    LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    baseline = LinearClassifier(adata, C=model._linear_path_C)
    baseline.train(enable_progress_bar=False, novelty=False)
    rows = [model.classes.index(c) for c in baseline.classes]
    torch.testing.assert_close(
        model.module.linear.weight[rows], baseline.module.linear.weight, rtol=1e-3, atol=1e-4
    )


def test_predict_and_latent_for_indices_only(model_and_data):
    model, adata = model_and_data
    full = model.predict(adata, soft=True, key_prefix=None)
    z = model.get_latent_representation(adata, key_prefix=None)
    rows = [5, 0, 17]
    labels = model.predict(adata, indices=rows, key_prefix="sub")
    soft = model.predict(adata, indices=rows, soft=True, key_prefix=None)
    assert list(soft.index) == list(adata.obs_names[rows])
    np.testing.assert_allclose(soft.to_numpy(), full.to_numpy()[rows], rtol=1e-5, atol=1e-6)
    assert list(labels) == list(full.columns[full.to_numpy()[rows].argmax(1)])
    written = adata.obs["sub_prediction"]
    assert written.iloc[rows].notna().all() and written.isna().sum() == adata.n_obs - 3
    assert np.isnan(adata.obs["sub_confidence"].to_numpy()).sum() == adata.n_obs - 3
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[rows] = True
    sub = model.get_latent_representation(adata, indices=mask, key_prefix="sub")
    np.testing.assert_allclose(sub, z[np.sort(rows)], rtol=1e-5, atol=1e-6)
    assert np.isnan(adata.obsm["X_sub"]).all(1).sum() == adata.n_obs - 3
    with pytest.raises(ValueError, match="repeated"):
        model.predict(adata, indices=[1, 1])
    with pytest.raises(ValueError, match="positions in"):
        model.predict(adata, indices=[adata.n_obs])


def test_pure_transformer_trains_for_its_own_longer_budget():
    adata = make_counts(n_cells=60, n_genes=12)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    with_path = CellTransformer(adata, d_model=16, n_heads=2)
    pure = CellTransformer(adata, d_model=16, n_heads=2, linear_path=False)
    # 1,900 training cells in batches of 64: 30 steps an epoch
    assert with_path._default_max_epochs(1900, 64) == 14  # about 400 steps
    assert pure._default_max_epochs(1900, 64) == 54  # about 1,600 steps
    assert pure._default_max_epochs(100, 64) == 60  # at most 60 epochs
