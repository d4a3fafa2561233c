"""The guard: a transformer's head is kept only where it beats the model's own linear path."""

import numpy as np
import pytest
import torch
from helpers import make_counts

import cellformer as cf
from cellformer.model import CellTransformer, LinearClassifier
from cellformer.model._path_guard import choose_path, path_logits, sign_test

TINY = {"d_model": 16, "n_heads": 2}


def _trained(adata, **train):
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, **TINY)
    model.train(
        max_epochs=8, enable_progress_bar=False, batch_size=32, plan_kwargs={"lr": 5e-3}, **train
    )
    return model


@pytest.fixture(scope="module")
def model():
    return _trained(make_counts(n_cells=240, n_genes=30))


def _val_idx(model, n=60):
    labels = model._train_labels()
    return np.flatnonzero(labels < model.n_classes)[:n]


def test_sign_test_is_the_one_sided_binomial_tail():
    assert sign_test(0, 0) == 1.0
    assert sign_test(4, 0) == pytest.approx(1 / 16)
    assert sign_test(6, 1) == pytest.approx(8 / 128)
    assert sign_test(1, 1) == pytest.approx(3 / 4)


def test_training_records_the_choice_and_a_dropped_head_is_zero(model):
    choice = model.path_choice_
    assert choice["chosen"] in ("linear path alone", "linear path + transformer head")
    assert choice["validation_cells"] == model.training_summary_["n_validation_cells"] > 0
    for key in ("macro_f1_with_head", "macro_f1_linear_path", "loss_with_head", "sign_test_p"):
        assert np.isfinite(choice[key])
    if choice["chosen"] == "linear path alone":
        assert not model.module.head[-1].weight.abs().sum()


def test_a_harmful_head_is_dropped_and_the_model_predicts_as_its_linear_path(model):
    module = model.module
    saved = {k: v.clone() for k, v in module.head.state_dict().items()}
    try:
        torch.manual_seed(0)
        with torch.no_grad():  # a head that scrambles the labels
            module.head[-1].weight.normal_(0, 5.0)
            module.head[-1].bias.normal_(0, 20.0)
        idx = _val_idx(model)
        record = choose_path(model, idx)
        assert record["chosen"] == "linear path alone"
        assert record["macro_f1_with_head"] < record["macro_f1_linear_path"]
        assert record["cells_the_head_breaks"] > record["cells_the_head_fixes"]
        full, linear = path_logits(model, idx)
        np.testing.assert_allclose(full, linear, atol=1e-5)
    finally:
        module.head.load_state_dict(saved)


def test_a_head_that_helps_is_kept(model):
    module = model.module
    saved_head = {k: v.clone() for k, v in module.head.state_dict().items()}
    saved_linear = {k: v.clone() for k, v in module.linear.state_dict().items()}
    try:
        with torch.no_grad():  # a useless linear path; the head: the trained auxiliary classifier
            module.linear.weight.zero_()
            module.linear.bias.zero_()
            module.head[-1].weight.copy_(module.aux_head.weight)
            module.head[-1].bias.copy_(module.aux_head.bias)
        record = choose_path(model, _val_idx(model, 150))
        assert record["chosen"] == "linear path + transformer head", record
        assert record["sign_test_p"] <= 0.1
        assert module.head[-1].weight.abs().sum() > 0
    finally:
        module.head.load_state_dict(saved_head)
        module.linear.load_state_dict(saved_linear)


def test_a_higher_macro_f1_from_a_cell_or_two_does_not_keep_the_head(model, monkeypatch):
    # the head changes two labels, both for the better: macro-F1 rises, the sign test says noise
    from cellformer.model import _path_guard

    idx = _val_idx(model)
    y = model._train_labels()[idx]
    linear = np.eye(model.n_classes)[(y + 1) % model.n_classes] * 5.0  # all wrong
    full = linear.copy()
    full[:2] = np.eye(model.n_classes)[y[:2]] * 10.0  # two cells put right
    monkeypatch.setattr(_path_guard, "path_logits", lambda m, i: (full, linear))
    monkeypatch.setattr(_path_guard, "zero_head", lambda module: None)
    record = choose_path(model, idx)
    assert record["macro_f1_with_head"] > record["macro_f1_linear_path"]
    assert (record["cells_the_head_fixes"], record["cells_the_head_breaks"]) == (2, 0)
    assert record["chosen"] == "linear path alone"
    full[:8] = np.eye(model.n_classes)[y[:8]] * 10.0  # eight of eight: kept
    assert choose_path(model, idx)["chosen"] == "linear path + transformer head"


def test_the_choice_is_saved_loaded_and_written_to_the_model_card(model, tmp_path):
    model.save(str(tmp_path / "m"))
    loaded = CellTransformer.load(str(tmp_path / "m"))
    assert loaded.path_choice_ == model.path_choice_
    card = (tmp_path / "m" / "README.md").read_text()
    assert f"Predictions: **{model.path_choice_['chosen']}**" in card


@pytest.mark.slow
def test_a_dropped_head_leaves_the_linear_model_on_real_cells(pbmc68k):
    # pbmc68k_reduced: the head does not pass the guard on 10% of 560 cells (the main job's
    # folds: see issue 41); the model then predicts as LinearClassifier does on the same cells
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(
        np.arange(pbmc68k.n_obs), test_size=0.2, random_state=0, stratify=pbmc68k.obs["cell_type"]
    )
    train, test = pbmc68k[tr].copy(), pbmc68k[te].copy()
    CellTransformer.setup_anndata(train, labels_key="cell_type")
    transformer = CellTransformer(train)
    transformer.train(enable_progress_bar=False, max_epochs=20)
    LinearClassifier.setup_anndata(train, labels_key="cell_type")
    linear = LinearClassifier(train)
    linear.train(enable_progress_bar=False)
    if transformer.path_choice_["chosen"] != "linear path alone":
        pytest.skip("the head passed the guard on this split")
    a = transformer.predict(test, soft=True, key_prefix=None)
    b = linear.predict(test, soft=True, key_prefix=None)
    agree = (a.to_numpy().argmax(1) == b.to_numpy().argmax(1)).mean()
    assert agree >= 0.97


def test_annotate_auto_reports_the_choice_and_uses_the_model_it_names(pbmc68k):
    ref = pbmc68k[::2].copy()
    query = pbmc68k[1::2].copy()
    out = cf.tl.annotate(query, ref, "cell_type", model="auto", max_epochs=3, progress=False)
    auto = out.uns["cellformer"]["auto"]
    assert auto["chosen"] in ("linear path alone", "linear path + transformer head")
    expected = "LinearClassifier" if auto["chosen"] == "linear path alone" else "CellTransformer"
    assert auto["model"] == out.uns["cellformer"]["model"] == expected
    assert out.obs["cellformer_prediction"].notna().all()


def test_pruning_keeps_the_record_of_the_guard():
    model = _trained(make_counts(n_cells=240, n_genes=30, seed=3))
    before = model.path_choice_
    model.prune(ffn_sparsity=0.5, steps=1, fine_tune_epochs=1)
    assert before is not None and model.path_choice_ == before
