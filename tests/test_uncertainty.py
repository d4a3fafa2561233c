"""Bayesian layers, Monte-Carlo averaging and calibration metrics (hand-computed cases)."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cellformer.bench import calibration_metrics
from cellformer.nn import BayesianLinear, kl_divergence, mc_sampling, predictive_summary


def test_kl_is_zero_when_posterior_equals_prior_and_positive_otherwise():
    layer = BayesianLinear(5, 3, prior_sigma=0.5, init_sigma=0.5)
    with torch.no_grad():
        layer.weight_mu.zero_()
        layer.bias_mu.zero_()
    assert abs(float(layer.kl().detach())) < 1e-5
    with torch.no_grad():
        layer.weight_mu.fill_(0.1)
    # KL(N(μ, s²) ‖ N(0, s²)) = μ² / (2 s²) per weight
    expected = 15 * 0.1**2 / (2 * 0.25)
    assert float(layer.kl().detach()) == pytest.approx(expected, rel=1e-4)
    value = kl_divergence(torch.tensor([0.0]), torch.tensor([0.1]), 1.0)
    assert float(value) == pytest.approx(math.log(10) + 0.01 / 2 - 0.5, rel=1e-5)


@torch.no_grad()
def test_output_variance_shrinks_with_sigma_and_eval_is_the_mean():
    torch.manual_seed(0)
    x = torch.randn(1, 8).expand(2000, 8)
    variances = []
    for sigma in (1.0, 0.1, 0.001):
        layer = BayesianLinear(8, 2, init_sigma=sigma).train()
        variances.append(float(layer(x).var(0).mean()))
        layer.eval()
        mean = torch.nn.functional.linear(x, layer.weight_mu, layer.bias_mu)
        torch.testing.assert_close(layer(x), mean)
        with mc_sampling(layer):
            assert float(layer(x).var(0).mean()) > 0
        torch.testing.assert_close(layer(x), mean)  # state restored
    assert variances[0] > 50 * variances[1] > 2500 * variances[2]
    # local reparameterisation: Var = Σ x² σ² + σ_b²
    expected = float((x[0] ** 2).sum() * 1.0**2 + 1.0**2)
    assert variances[0] == pytest.approx(expected, rel=0.1)


def test_mc_averages_probabilities_not_logits():
    """Two samples with opposite confident logits: the mean probability is 0.5 / 0.5.

    Averaging logits would give [0, 0] → also 0.5, so use unequal magnitudes: logits (4, 0) and
    (0, 1). Probability averaging gives p0 = (σ(4) + σ(-1)) / 2 ≈ 0.625; logit averaging would give
    σ(2 − 0.5) ≈ 0.818.
    """
    logits = torch.tensor([[[4.0, 0.0]], [[0.0, 1.0]]])
    out = predictive_summary(logits)
    p0 = (torch.sigmoid(torch.tensor(4.0)) + torch.sigmoid(torch.tensor(-1.0))) / 2
    torch.testing.assert_close(out["probs"][0, 0], p0)
    assert abs(float(out["probs"][0, 0]) - float(torch.sigmoid(torch.tensor(1.5)))) > 0.1
    assert float(out["mutual_info"][0]) > 0  # the samples disagree
    same = predictive_summary(torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]]))
    assert float(same["mutual_info"][0]) == pytest.approx(0.0, abs=1e-6)
    assert float(same["std"].abs().max()) == 0.0


def test_mc_dropout_samples_only_dropout():
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5), torch.nn.LayerNorm(4))
    net.eval()
    x = torch.randn(64, 4)
    torch.testing.assert_close(net(x), net(x))
    with mc_sampling(net, dropout=True):
        assert net[1].training and not net[2].training
        assert not torch.equal(net(x), net(x))
    assert not net[1].training


def test_calibration_metrics_match_hand_computed_values():
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    y = np.array(["a", "b", "b", "a"])
    out = calibration_metrics(y, probs, ["a", "b"], n_bins=2)
    # bins of confidence: (0, 0.5] none; (0.5, 1]: all four, confidence mean 0.75, accuracy 0.75
    assert out["ece"] == pytest.approx(0.0, abs=1e-12)
    nll = -(np.log(0.9) + np.log(0.4) + np.log(0.7) + np.log(0.8)) / 4
    assert out["nll"] == pytest.approx(nll)
    brier = (0.01 * 2 + 0.36 * 2 + 0.09 * 2 + 0.04 * 2) / 4
    assert out["brier"] == pytest.approx(brier)
    out10 = calibration_metrics(y, probs, ["a", "b"], n_bins=10)
    # bins: 0.9 → correct; 0.6 → wrong; 0.7 → correct; 0.8 → correct: each alone in its bin
    ece = (abs(1 - 0.9) + abs(0 - 0.6) + abs(1 - 0.7) + abs(1 - 0.8)) / 4
    assert out10["ece"] == pytest.approx(ece)
    unseen = calibration_metrics(["c"], [[0.5, 0.5]], ["a", "b"])  # a held-out type
    assert unseen["nll"] == pytest.approx(-np.log(1e-12))
    with pytest.raises(ValueError, match="shape"):
        calibration_metrics(y, probs[:, :1], ["a", "b"])


# -- models ------------------------------------------------------------------------------------
def _bayes_model(**kwargs):
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=150, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2, head="bayesian", **kwargs)
    model.train(max_epochs=8, enable_progress_bar=False, batch_size=32, validation_size=0.2)
    return model, adata


def test_bayesian_head_predicts_with_uncertainty_keys_and_unknown(tmp_path):
    from cellformer.model import CellTransformer

    model, adata = _bayes_model(bayesian_ffn=True)
    assert len(model.module.bayesian_layers) == 3  # head + 2 FFN layers
    assert "train_kl" in model.history
    mean, std = model.predict(soft=True, mc_samples=8, return_std=True)
    # soft=True is one DataFrame whatever the sampling; the std only on request
    assert isinstance(model.predict(soft=True, mc_samples=8, key_prefix=None), pd.DataFrame)
    with pytest.raises(ValueError, match="return_std=True goes with soft=True"):
        model.predict(return_std=True, key_prefix=None)
    assert mean.shape == std.shape == (adata.n_obs, model.n_classes)
    assert (std.to_numpy() > 0).any()  # samples differ
    np.testing.assert_allclose(mean.sum(1), 1, rtol=1e-5)
    for key in ("prediction", "confidence", "entropy", "mutual_info", "novelty", "unknown"):
        assert f"cellformer_{key}" in adata.obs, key
    assert (adata.obs["cellformer_mutual_info"] >= 0).all()
    threshold = float(model.module.unknown_threshold)
    assert 0 < threshold <= 1
    labels = model.predict(reject_unknown=True, mc_samples=8)
    rejected = adata.obs["cellformer_unknown"].to_numpy()
    assert set(labels[rejected]) <= {"Unknown"}
    assert "Unknown" in adata.obs["cellformer_prediction"].cat.categories
    model.save(tmp_path / "m")
    loaded = CellTransformer.load(tmp_path / "m", adata=adata.copy())
    assert float(loaded.module.unknown_threshold) == threshold
    one_sample, _ = model.predict(
        soft=True, mc_samples=1, return_std=True
    )  # one random draw, std 0
    assert one_sample.shape == mean.shape


def test_init_sigma_sets_the_head_posterior_scale_and_survives_save_load(tmp_path):
    """The head's posterior starts at ``init_sigma``, FFN layers stay near a point."""
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=60, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    for init in (0.1, 0.02):
        model = CellTransformer(adata, d_model=16, n_heads=2, head="bayesian", init_sigma=init)
        head = model.module.head[-1]
        torch.testing.assert_close(head.weight_sigma, torch.full_like(head.weight_sigma, init))
        torch.testing.assert_close(head.bias_sigma, torch.full_like(head.bias_sigma, init))
    model = CellTransformer(adata, d_model=16, n_heads=2, linear_path=False)
    model.train(max_epochs=1, enable_progress_bar=False, batch_size=32)
    model.to_bayesian(ffn=True, init_sigma=0.05)
    head, ffn = model.module.head[-1], model.module.encoder.layers[0].ff[0]
    assert float(head.weight_sigma.mean()) == pytest.approx(0.05, rel=1e-5)
    assert float(ffn.weight_sigma.max()) < 0.01
    mean, std = model.predict(soft=True, mc_samples=20, return_std=True)
    assert float(std.to_numpy().max()) > 1e-3  # the head's samples really differ
    model.save(tmp_path / "m")
    loaded = CellTransformer.load(tmp_path / "m", adata=adata.copy())
    torch.testing.assert_close(loaded.module.head[-1].weight_rho, head.weight_rho)
    assert loaded.encoder_config.init_sigma == 0.05 and loaded.encoder_config.head == "bayesian"


def test_mc_dropout_and_deterministic_predict_for_plain_models():
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=90, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    # no linear path: it would solve this data alone and leave dropout nothing to vary
    model = CellTransformer(adata, d_model=16, n_heads=2, dropout=0.3, linear_path=False)
    model.train(max_epochs=2, enable_progress_bar=False, batch_size=32)
    assert model.mc_samples_default is None
    once = model.predict(soft=True)
    pd.testing.assert_frame_equal(model.predict(soft=True), once)  # no sampling by default
    mean, std = model.predict(soft=True, mc_dropout=True, mc_samples=5, return_std=True)
    assert (std.to_numpy() > 0).any()
    assert "cellformer_mutual_info" in adata.obs
    with pytest.raises(ValueError, match="mc_samples"):
        model.predict(mc_samples=0)


def test_reliability_diagram_from_anndata_and_arrays():
    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    from cellformer import pl

    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.8, 0.2]])
    y = np.array(["a", "b", "b", "a"])
    ax = pl.reliability((y, probs, ["a", "b"]), n_bins=10)
    bins = ax.reliability
    assert bins["ece"] == pytest.approx(calibration_metrics(y, probs, ["a", "b"], 10)["ece"])
    assert bins["n"].sum() == 4 and bins["accuracy"][5] == 0.0  # the 0.6 cell is wrong
    adata = ad.AnnData(np.zeros((4, 1), dtype=np.float32))
    adata.obs["cell_type"] = y
    adata.obs["cellformer_prediction"] = np.array(["a", "a", "b", "a"])
    adata.obs["cellformer_confidence"] = probs.max(1)
    ax2 = pl.reliability(adata, labels_key="cell_type", n_bins=10)
    np.testing.assert_array_equal(ax2.reliability["n"], bins["n"])
    with pytest.raises(KeyError, match="labels_key"):
        pl.reliability(adata, labels_key="nope")
    with pytest.raises(KeyError, match="predict"):
        pl.reliability(adata, labels_key="cell_type", key_prefix="other")


def test_temperature_scaling_lowers_validation_nll_and_keeps_labels():
    from helpers import make_counts

    from cellformer.model import CellTransformer
    from cellformer.model.base._calibration import fit_temperature

    adata = make_counts(n_cells=150, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(max_epochs=6, enable_progress_bar=False, batch_size=32, validation_size=0.3)
    before = model.predict(soft=True, key_prefix=None)
    model.module.temperature.fill_(1.0)
    fit_temperature(model, np.arange(adata.n_obs))
    temperature = float(model.module.temperature)
    assert temperature != 1.0
    after = model.predict(soft=True, key_prefix=None)
    np.testing.assert_array_equal(before.to_numpy().argmax(1), after.to_numpy().argmax(1))
    y = adata.obs["cell_type"].astype(str).to_numpy()
    nll_before = calibration_metrics(y, before.to_numpy(), before.columns)["nll"]
    nll_after = calibration_metrics(y, after.to_numpy(), after.columns)["nll"]
    assert nll_after <= nll_before + 1e-6  # T minimises the NLL of these cells
    with pytest.raises(ValueError, match="validation"):
        model.train(
            max_epochs=1, enable_progress_bar=False, validation_size=0, temperature_scaling=True
        )


def test_holdout_class_scores_unknown_detection():
    from helpers import make_counts

    from cellformer import InputError
    from cellformer.bench import holdout_class

    adata = make_counts(n_cells=150, n_genes=30)
    models = {
        "linear": {"max_epochs": 20},
        "sklearn_logreg": {},
        "transformer": {
            "d_model": 16,
            "n_heads": 2,
            "head": "bayesian",
            "train": {"max_epochs": 3},
        },
    }
    out = holdout_class(adata, "cell_type", "type_2", models=models)
    assert set(out.model) == set(models)
    assert (out.n_unknown == 50).all()
    assert out.auroc.between(0, 1).all() and out.ece.between(0, 1).all()
    assert "mutual_info" in set(out[out.model == "transformer"].score)  # Bayesian: epistemic
    for name in ("linear", "transformer"):
        assert "novelty" in set(out[out.model == name].score)
    with pytest.raises(InputError, match="not in obs"):
        holdout_class(adata, "cell_type", "type_9", models=["linear"])


# -- pruning -----------------------------------------------------------------------------------
@pytest.mark.parametrize("bayesian", [False, True])
def test_pruning_units_with_zero_weight_changes_nothing_and_shrinks_tensors(bayesian):
    from cellformer.nn import (
        TransformerEncoder,
        ffn_importance,
        head_importance,
        prune_ffn,
        prune_heads,
    )

    torch.manual_seed(0)
    enc = TransformerEncoder(16, 4, 1, 32, dropout=0.0, bayesian_ffn=bayesian).eval()
    block = enc.layers[0]
    dead_units = torch.tensor([1, 5, 6, 20, 31])
    second = block.ff[-1]
    with torch.no_grad():  # units whose output weights are zero contribute nothing
        (second.weight_mu if bayesian else second.weight)[:, dead_units] = 0.0
        block.attn.out.weight[:, 4:8] = 0.0  # head 1 writes nothing
    x = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    before = enc(x, pad)
    importance = ffn_importance(block)
    assert importance.shape == (32,)
    keep = torch.tensor([i for i in range(32) if i not in dead_units.tolist()])
    prune_ffn(block, keep)
    prune_heads(block.attn, [0, 2, 3])
    torch.testing.assert_close(enc(x, pad), before, atol=1e-5, rtol=1e-5)
    assert tuple((block.ff[0].weight_mu if bayesian else block.ff[0].weight).shape) == (27, 16)
    if bayesian:  # the variance parameters shrink with the means
        assert tuple(block.ff[0].weight_rho.shape) == (27, 16)
        assert tuple(block.ff[-1].weight_rho.shape) == (16, 27)
    assert tuple(block.attn.qkv.weight.shape) == (3 * 3 * 4, 16)
    assert tuple(block.attn.out.weight.shape) == (16, 12)
    assert head_importance(block.attn).shape == (3,)
    n_params = sum(p.numel() for p in enc.parameters())
    assert n_params < sum(
        p.numel() for p in TransformerEncoder(16, 4, 1, 32, bayesian_ffn=bayesian).parameters()
    )


@pytest.mark.slow
def test_model_prune_shrinks_saves_loads_and_reports(tmp_path):
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=150, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=4, n_layers=2)
    model.train(max_epochs=6, enable_progress_bar=False, batch_size=32)
    n_before = sum(p.numel() for p in model.module.parameters())
    report = model.prune(
        ffn_sparsity=0.5,
        head_sparsity=0.5,
        steps=2,
        fine_tune_epochs=1,
        tolerance=1.0,
        score="taylor",
    )
    assert list(report.step) == [0, 1, 2] and report.kept.all()
    assert model.module.layer_sizes == [(2, 16), (2, 16)]  # from 4 heads, 32 units per block
    assert report.n_params.iloc[-1] == sum(p.numel() for p in model.module.parameters()) < n_before
    assert report.flops_per_cell.is_monotonic_decreasing
    probs = model.predict(soft=True, key_prefix=None)
    model.save(tmp_path / "m")
    loaded = CellTransformer.load(tmp_path / "m", adata=adata.copy())
    assert loaded.module.layer_sizes == [(2, 16), (2, 16)]
    pd.testing.assert_frame_equal(loaded.predict(soft=True, key_prefix=None), probs)
    assert model.pruning_report() is report


def test_prune_undoes_a_step_that_costs_too_much():
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=90, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(max_epochs=2, enable_progress_bar=False, batch_size=32)
    with pytest.raises(ValueError, match="not been pruned"):
        model.pruning_report()
    report = model.prune(ffn_sparsity=0.9, steps=1, fine_tune_epochs=1, tolerance=-1.0)
    assert list(report.kept) == [True, False]
    assert model.module.layer_sizes == [(2, 32)]  # unchanged


def test_prune_judges_steps_with_a_linear_path_that_never_saw_the_validation_cells():
    """train() ends with the linear path refit on every labelled cell; prune must not use that."""
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=90, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(max_epochs=2, enable_progress_bar=False, batch_size=32)
    final = model.module.linear.weight.detach().clone()
    fitted_on, judged_with = [], []
    fit, judge = model._fit_linear_path, model._validation_macro_f1

    def spy_fit(idx, **kwargs):
        fitted_on.append(set(np.asarray(idx).tolist()))
        return fit(idx, **kwargs)

    def spy_judge(val_idx):
        judged_with.append((fitted_on[-1], set(np.asarray(val_idx).tolist())))
        return judge(val_idx)

    model._fit_linear_path, model._validation_macro_f1 = spy_fit, spy_judge
    model.prune(ffn_sparsity=0.5, steps=2, fine_tune_epochs=1)
    assert len(judged_with) == 3  # before pruning and after each step
    for linear_cells, val_cells in judged_with:
        assert val_cells and not linear_cells & val_cells
    # fit once on the training split (fine-tuning steps keep it), then on every labelled cell,
    # as train() leaves it
    assert len(fitted_on) == 2
    assert fitted_on[-1] == set(range(adata.n_obs))
    torch.testing.assert_close(model.module.linear.weight, final)


@pytest.mark.slow
def test_two_stage_training_bayesian_fine_tuning_and_pruning(tmp_path):
    from helpers import make_counts

    from cellformer.model import CellTransformer
    from cellformer.nn import BayesianLinear

    adata = make_counts(n_cells=150, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(
        max_epochs=4,
        enable_progress_bar=False,
        batch_size=32,
        stage_b={
            "ffn": True,
            "max_epochs": 2,
            "prune": {"ffn_sparsity": 0.5, "steps": 1, "fine_tune_epochs": 1, "tolerance": 1.0},
        },
    )
    assert len(model.module.bayesian_layers) == 3
    assert isinstance(model.module.encoder.layers[0].ff[0], BayesianLinear)
    assert model.module.layer_sizes == [(2, 16)]
    mean = model.predict(soft=True, key_prefix=None, mc_samples=4)
    np.testing.assert_allclose(mean.to_numpy().sum(1), 1.0, atol=1e-5)
    model.save(tmp_path / "m")
    loaded = CellTransformer.load(tmp_path / "m", adata=adata.copy())
    assert len(loaded.module.bayesian_layers) == 3 and loaded.module.layer_sizes == [(2, 16)]
    assert (loaded.predict(key_prefix=None) == model.predict(key_prefix=None)).all()


# -- novelty -----------------------------------------------------------------------------------
def test_novelty_scorer_flags_cells_far_from_training_and_round_trips():
    from sklearn.metrics import roc_auc_score

    from cellformer.nn import NoveltyScorer

    rng = np.random.default_rng(0)
    basis = rng.normal(size=(5, 40))
    noise = 0.3

    def cells(n, shift=0.0):
        factors = rng.normal(size=(n, 5))
        factors[:, 0] += shift  # a programme far stronger than in any training cell
        return factors @ basis + 3 + noise * rng.normal(size=(n, 40))

    train, same, shifted = cells(300), cells(100), cells(100, shift=6.0)
    scorer = NoveltyScorer(40, n_components=10, n_neighbors=5)
    x = torch.as_tensor(np.vstack([same, shifted]), dtype=torch.float32)
    assert torch.isnan(scorer(x)).all()  # not fitted: no score, not a wrong one
    scorer.fit(train)
    scores = scorer(x).numpy()
    assert roc_auc_score(np.repeat([0, 1], 100), scores) > 0.99
    assert scorer.components.shape == (40, 10) and scorer.reference.shape == (300, 10)
    loaded = NoveltyScorer(40, n_components=10, n_neighbors=5)
    loaded.load_state_dict(scorer.state_dict())  # buffers take the fitted shapes
    torch.testing.assert_close(loaded(x), scorer(x))
    with pytest.raises(ValueError, match="Expected"):
        scorer.fit(train[:, :30])


@pytest.mark.slow
def test_novelty_flags_a_held_out_real_cell_type_that_confidence_misses(pbmc68k):
    from cellformer.bench import holdout_class

    out = holdout_class(pbmc68k, "bulk_labels", "CD19+ B", models={"linear": {"max_epochs": 30}})
    auroc = out.set_index("score").auroc
    assert auroc["novelty"] > 0.9
    assert auroc["novelty"] > auroc["entropy"]


def test_novelty_is_written_saved_and_used_for_unknown(tmp_path, counts_adata):
    from cellformer.model import LinearClassifier

    LinearClassifier.setup_anndata(counts_adata, labels_key="cell_type")
    model = LinearClassifier(counts_adata)
    model.train(max_epochs=5, enable_progress_bar=False, validation_size=0.2, unknown_rate=0.1)
    threshold = float(model.module.novelty.threshold)
    assert np.isfinite(threshold)
    query = counts_adata.copy()
    X = query.X.toarray() if hasattr(query.X, "toarray") else np.array(query.X)
    X[:10] = 0
    X[:10, :3] = 1000  # all counts in three genes: nothing like a training cell
    query.X = X
    labels = model.predict(query, reject_unknown=True)
    novelty = query.obs["cellformer_novelty"].to_numpy()
    assert (novelty[:10] > threshold).all()
    assert (labels[:10] == "Unknown").all()
    assert query.obs["cellformer_unknown"].mean() < 0.5
    model.save(tmp_path / "m")
    loaded = LinearClassifier.load(tmp_path / "m")
    again = query.copy()
    loaded.predict(again)
    np.testing.assert_allclose(again.obs["cellformer_novelty"], novelty, rtol=1e-5)
    assert float(loaded.module.novelty.threshold) == threshold
    without = LinearClassifier(counts_adata)
    without.train(max_epochs=1, enable_progress_bar=False, novelty=False)
    fresh = counts_adata.copy()
    without.predict(fresh)
    assert "cellformer_novelty" not in fresh.obs  # no score rather than a meaningless one
