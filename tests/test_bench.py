"""Benchmark splits, runner, learning curves and the visual report."""

import json

import numpy as np
import pandas as pd
import pytest
from helpers import make_counts
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef

from cellformer import InputError, _core, bench

FAST = {"linear": {"max_epochs": 5}}


@pytest.fixture
def grouped():
    adata = make_counts(n_cells=180, n_genes=30)
    adata.obs["donor"] = np.tile(["D1", "D2", "D3"], 60)
    # type_2 exists only in donor D3: held out with it, it is novel
    keep = ~((adata.obs["cell_type"] == "type_2") & (adata.obs["donor"] != "D3")).to_numpy()
    return adata[keep].copy()


def test_kfold_partitions_cells_and_seeds_repeat():
    adata = make_counts(n_cells=90)
    folds = list(bench.StratifiedKFold(3, seeds=[0, 1]).split(adata, "cell_type"))
    assert [f.name for f in folds][:2] == ["seed0/fold0", "seed0/fold1"] and len(folds) == 6
    for seed in (0, 1):
        mine = [f for f in folds if f.seed == seed]
        tests = np.concatenate([f.test for f in mine])
        assert sorted(tests) == list(range(90))  # every cell tested once per seed
        for f in mine:
            assert not np.intersect1d(f.train, f.test).size
            assert len(np.unique(adata.obs["cell_type"].to_numpy()[f.test])) == 3  # stratified
    assert not np.array_equal(folds[0].test, folds[3].test)  # another seed, other folds
    some = list(bench.StratifiedKFold(3, seeds=[0, 1], only=[2]).split(adata, "cell_type"))
    assert [f.name for f in some] == ["seed0/fold2", "seed1/fold2"]  # the same folds, a subset
    np.testing.assert_array_equal(some[0].test, folds[2].test)
    with pytest.raises(ValueError, match="fold indices"):
        bench.StratifiedKFold(3, only=[3])


def test_leave_one_group_out_holds_groups_out_entirely_and_sets_novel_types_apart(grouped):
    folds = {f.name: f for f in bench.LeaveOneGroupOut("donor").split(grouped, "cell_type")}
    assert set(folds) == {"donor=D1", "donor=D2", "donor=D3"}
    donor = grouped.obs["donor"].to_numpy()
    y = grouped.obs["cell_type"].astype(str).to_numpy()
    for name, fold in folds.items():
        group = name.split("=")[1]
        assert (donor[fold.train] != group).all()
        assert (donor[np.concatenate([fold.test, fold.novel])] == group).all()
    d3 = folds["donor=D3"]
    assert set(y[d3.novel]) == {"type_2"} and "type_2" not in set(y[d3.test])
    assert len(folds["donor=D1"].novel) == 0
    with pytest.raises(InputError, match="not in obs"):
        list(bench.LeaveOneGroupOut("donor", ["D9"]).split(grouped, "cell_type"))
    with pytest.raises(InputError, match="No column"):
        list(bench.LeaveOneGroupOut("tissue").split(grouped, "cell_type"))


def test_predefined_split_and_spec_strings():
    adata = make_counts(n_cells=60)
    adata.obs["split"] = np.where(np.arange(60) % 4 == 0, "test", "train")
    adata.obs.loc[adata.obs_names[1::8], "split"] = "val"
    (fold,) = bench.PredefinedSplit("split").split(adata, "cell_type")
    assert len(fold.test) == 15 and len(fold.train) == 45  # val joins training
    assert isinstance(bench.make_split("column:split"), bench.PredefinedSplit)
    assert bench.make_split("kfold:3").n_folds == 3
    assert bench.make_split("group:donor=D1").groups == ["D1"]
    with pytest.raises(ValueError, match="Unknown split"):
        bench.make_split("bootstrap")


def test_training_subsets_are_nested_stratified_and_keep_every_class():
    y = np.repeat(["a", "b", "c"], [100, 40, 3])
    subsets = bench.subsample_training(np.arange(143), y, [0.1, 0.5, 1.0], seed=0)
    assert set(subsets[0.1]) <= set(subsets[0.5]) <= set(subsets[1.0])
    assert len(subsets[1.0]) == 143
    counts = pd.Series(y[subsets[0.1]]).value_counts()
    assert counts["a"] == 10 and counts["b"] == 4 and counts["c"] == 1


def test_metrics_equal_scikit_learn():
    rng = np.random.default_rng(0)
    y_true = rng.choice(["x", "y", "z"], 200)
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.choice(["x", "y", "z"], 200))
    m = bench.classification_metrics(y_true, y_pred)
    assert m["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred))
    per_class = bench.per_class_f1(y_true, y_pred)
    expected = f1_score(y_true, y_pred, labels=["x", "y", "z"], average=None)
    assert list(per_class.values()) == pytest.approx(list(expected))


def test_run_fits_every_statistic_on_training_cells_only(monkeypatch, grouped):
    seen = {"fit": [], "scaler": []}
    fit_linear = bench.MODELS["linear"]

    def spy_fit(train, labels_key, layer, seed, config):
        seen["fit"].append(set(train.obs_names))
        return fit_linear(train, labels_key, layer, seed, config)

    real_scaler = _core.fit_scaler

    def spy_scaler(X, kind, indices=None, **kwargs):
        seen["scaler"].append(X.shape[0] if indices is None else len(indices))
        return real_scaler(X, kind, indices, **kwargs)

    monkeypatch.setitem(bench.MODELS, "linear", spy_fit)
    monkeypatch.setattr(_core, "fit_scaler", spy_scaler)
    results = bench.run(grouped, "cell_type", FAST, split="group:donor", progress=False)
    donor = grouped.obs["donor"]
    for cells, name in zip(seen["fit"], results[results.model == "linear"].split, strict=True):
        group = name.split("=")[1]
        assert set(donor[list(cells)]) == {"D1", "D2", "D3"} - {group}
    n_train = results[results.model == "linear"].n_train.tolist()
    assert seen["scaler"] == n_train  # the scaler saw exactly the training cells
    d3 = results[(results.split == "donor=D3") & (results.model == "linear")].iloc[0]
    assert d3.n_novel > 0 and "type_2" not in set(d3.y_true)


@pytest.mark.slow
def test_run_records_failures_resumes_and_builds_a_learning_curve(tmp_path, monkeypatch):
    adata = make_counts(n_cells=90, n_genes=30)
    out = tmp_path / "runs.json"
    models = {**FAST, "broken": {"model": "linear", "C": -1.0}}
    first = bench.run(adata, "cell_type", models, split="kfold:2", train_sizes=[0.3, 1.0],
                      out=out, progress=False)  # fmt: skip
    linear = first[first.model == "linear"]
    assert len(linear) == 4 and linear.error.isna().all()
    assert first[first.model == "broken"].error.notna().all()  # recorded, not fatal
    assert (linear.groupby("split").n_train.apply(list).map(lambda v: v[0] < v[1])).all()
    assert {"per_class_f1", "peak_memory_mb", "ece", "y_pred"} <= set(first.columns)
    assert len(json.loads(out.read_text())["rows"]) == len(first)

    calls = []
    fit_linear = bench.MODELS["linear"]

    def counting(*args):
        calls.append(args[4])
        return fit_linear(*args)

    monkeypatch.setitem(bench.MODELS, "linear", counting)
    again = bench.run(adata, "cell_type", models, split="kfold:2", train_sizes=[0.3, 1.0],
                      out=out, progress=False)  # fmt: skip
    assert all(config.get("C") == -1.0 for config in calls) and len(calls) == 4  # failed ones
    pd.testing.assert_series_equal(
        again[again.model == "linear"].macro_f1.reset_index(drop=True),
        linear.macro_f1.reset_index(drop=True),
    )
    summary = bench.summarize(again)
    assert summary.loc["linear", "macro_f1_mean"] == pytest.approx(
        linear[linear.train_size == 1.0].macro_f1.mean()
    )


@pytest.mark.slow
def test_pretrained_model_pretrains_once_per_split_on_its_unlabelled_training_cells(monkeypatch):
    import cellformer.model

    adata = make_counts(n_cells=120, n_genes=30)
    real_pretrain = cellformer.model.pretrain
    seen = []

    def spy_pretrain(cells, **kwargs):
        seen.append(set(cells.obs_names))
        assert "cell_type" not in cells.obs  # labels are never read
        return real_pretrain(cells, **kwargs)

    monkeypatch.setattr(cellformer.model, "pretrain", spy_pretrain)
    small = {"d_model": 16, "n_heads": 2, "max_epochs": 1}
    models = {"pretrained": {"pretrain": small, "train": {"max_epochs": 2}}}
    results = bench.run(adata, "cell_type", models, split="kfold:2", train_sizes=[0.25, 1.0],
                        progress=False)  # fmt: skip
    rows = results[results.model == "pretrained"]
    assert rows.error.isna().all() and len(rows) == 4
    folds = list(bench.StratifiedKFold(2).split(adata, "cell_type"))
    assert len(seen) == 2  # one encoder per split, shared by its training sizes
    for cells, fold in zip(seen, folds, strict=True):
        assert cells == set(adata.obs_names[fold.train])  # the whole split, no test cell
    assert (rows.n_train.to_numpy() < 60).any()  # fine-tuned on the labelled share only


@pytest.mark.slow
def test_report_writes_every_figure_kind_as_readable_images(tmp_path):
    import matplotlib.image as mpimg

    adata = make_counts(n_cells=90, n_genes=30)
    results = bench.learning_curve(adata, "cell_type", FAST, sizes=[0.5, 1.0], split="kfold:2",
                                   embeddings=True, progress=False)  # fmt: skip
    from cellformer import pl

    figures = pl.benchmark_figures(results, tmp_path)
    path = bench.write_report(
        results, bench.summarize(results), tmp_path, {"data": "synthetic"}, figures
    )
    text = path.read_text()
    for name in ("metric_bars", "learning_curve", "confusion_linear", "reliability_linear",
                 "umap_linear"):  # fmt: skip
        image = mpimg.imread(tmp_path / f"{name}.png")
        assert image.shape[0] >= 300 and image.shape[1] >= 300, name
        assert image[..., :3].std() > 0.05, name  # not a blank canvas
        assert f"({name}.png)" in text
    assert "Learning curve" in text and "0.5 (" in text


@pytest.mark.slow
def test_cli_benchmark_with_groups_and_report(tmp_path, grouped):
    from cellformer.cli import main

    path = tmp_path / "grouped.h5ad"
    grouped.write_h5ad(path)
    out, report = tmp_path / "out", tmp_path / "report"
    code = main(["benchmark", "--data", str(path), "--models", "linear", "--split-key", "donor",
                 "--holdout", "D3", "--out", str(out), "--report", str(report),
                 "--learning-curve", "0.5", "--no-progress"])  # fmt: skip
    assert code == 0
    rows = json.loads((out / "runs.json").read_text())["rows"]
    assert {r["split"] for r in rows} == {"donor=D3"}
    assert {r["train_size"] for r in rows} == {0.5, 1.0}
    assert (report / "learning_curve.png").stat().st_size > 1000
    assert "leave one group out" in (report / "report.md").read_text()
    assert main(["benchmark", "--data", str(path), "--holdout", "D3", "--out", str(out)]) == 2


def test_validation_scores_from_a_confusion_matrix_equal_scikit_learn():
    import torch

    from cellformer.train._plan import confusion_scores

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    pred = np.where(rng.random(200) < 0.7, y, rng.integers(0, 5, 200))  # class 4 only predicted
    confusion = torch.bincount(torch.as_tensor(y * 6 + pred), minlength=36).view(6, 6)
    accuracy, macro_f1 = confusion_scores(confusion)  # class 5: in neither, left out
    assert float(accuracy) == pytest.approx(accuracy_score(y, pred))
    assert float(macro_f1) == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-6)
