import json
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
from helpers import make_counts

from cellformer.cli import main


@pytest.mark.slow
def test_help_lists_commands():
    out = subprocess.run(
        [sys.executable, "-m", "cellformer.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "benchmark" in out.stdout and "annotate" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "cellformer.cli", "benchmark", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--labels-key" in out.stdout and "examples:" in out.stdout


@pytest.mark.slow
def test_benchmark_on_a_file_writes_json_and_report(tmp_path, capsys):
    data = make_counts(n_cells=150, seed=3)
    data.write_h5ad(tmp_path / "d.h5ad")
    out = tmp_path / "bench"
    code = main(
        [
            "benchmark",
            "--data",
            str(tmp_path / "d.h5ad"),
            "--layer",
            "counts",
            "--folds",
            "3",
            "--models",
            "linear,sklearn_logreg",
            "--out",
            str(out),
            "--no-progress",
            "--holdout-class",
            "type_1",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "Split 3/3: fold2" in printed and "majority" in printed and "Mean ± sd" in printed
    assert "Unknown-cell detection AUROC" in printed
    held = json.loads((out / "holdout.json").read_text())
    assert {r["held_out"] for r in held} == {"type_1"} and all(0 <= r["auroc"] <= 1 for r in held)
    payload = json.loads((out / "results.json").read_text())
    models = {row["model"] for row in payload["per_fold"]}
    assert models == {"majority", "linear", "sklearn_logreg"}
    assert len(payload["per_fold"]) == 9
    lin = [r["macro_f1"] for r in payload["per_fold"] if r["model"] == "linear"]
    assert min(lin) > 0.9
    report = (out / "report.md").read_text()
    assert "| linear |" in report and "fit on the training cells of each split only" in report


@pytest.mark.slow
def test_benchmark_embedded_default(tmp_path):
    assert (
        main(
            [
                "benchmark",
                "--folds",
                "2",
                "--models",
                "linear",
                "--out",
                str(tmp_path),
                "--no-progress",
            ]
        )
        == 0
    )
    summary = {
        r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["summary"]
    }
    assert summary["linear"]["accuracy_mean"] > summary["majority"]["accuracy_mean"] + 0.3


def test_benchmark_unknown_model_or_preset_is_a_clear_error(tmp_path, capsys):
    code = main(["benchmark", "--models", "linear,transformer:geneformr", "--out", str(tmp_path)])
    assert code == 2
    assert "Unknown tokenizer preset 'geneformr'" in capsys.readouterr().out
    assert main(["benchmark", "--models", "xgboost", "--out", str(tmp_path)]) == 2


def test_benchmark_bad_labels_key_is_a_clear_error(tmp_path, capsys):
    code = main(["benchmark", "--labels-key", "celltype", "--out", str(tmp_path), "--no-progress"])
    assert code == 2
    assert "Did you mean 'cell_type'" in capsys.readouterr().out


def test_annotate_writes_annotated_h5ad(tmp_path):
    ref = make_counts(seed=1)
    query = make_counts(n_cells=60, seed=2)
    del query.obs["cell_type"]
    query = query[:, query.var_names[::-1]].copy()  # other gene order
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    out = tmp_path / "out" / "annotated.h5ad"
    code = main(
        [
            "annotate",
            "--reference",
            str(tmp_path / "ref.h5ad"),
            "--labels-key",
            "cell_type",
            "--query",
            str(tmp_path / "q.h5ad"),
            "--out",
            str(out),
            "--save-model",
            str(tmp_path / "model"),
            "--no-progress",
        ]
    )
    assert code == 0
    annotated = ad.read_h5ad(out)
    truth = make_counts(n_cells=60, seed=2).obs["cell_type"].to_numpy()
    assert (annotated.obs["cellformer_prediction"].to_numpy() == truth).mean() > 0.9
    assert annotated.obsm["X_cellformer"].shape == (60, 3)
    assert (tmp_path / "model" / "model.safetensors").exists()
    # nothing is overwritten without --overwrite; refused before training
    argv = ["annotate", "--model", str(tmp_path / "model"), "--query", str(tmp_path / "q.h5ad")]
    assert main([*argv, "--out", str(out)]) == 2
    assert main([*argv, "--out", str(out), "--overwrite"]) == 0
    (tmp_path / "file").write_text("x")
    assert main([*argv, "--out", str(tmp_path / "file" / "a.h5ad")]) == 2
    train = ["annotate", "--reference", str(tmp_path / "ref.h5ad"), "--labels-key", "cell_type"]
    train += ["--query", str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "b.h5ad")]
    assert main([*train, "--save-model", str(tmp_path / "model")]) == 2
    assert not (tmp_path / "b.h5ad").exists()


def test_model_kind_named_like_a_folder_is_the_kind(tmp_path, monkeypatch, caplog):
    from cellformer.tl._annotate import is_saved_model

    monkeypatch.chdir(tmp_path)
    (tmp_path / "linear").mkdir()
    assert not is_saved_model("linear") and not is_saved_model("transformer:scgpt")
    assert "is not read" in caplog.text
    assert is_saved_model("./linear")


def _scaled_with_raw(adata):
    """scanpy's usual file: log-normalised values in .raw, X scaled (negative) on those genes."""
    import scanpy as sc

    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.raw = adata
    sc.pp.scale(adata)
    return adata


def test_annotate_layer_raw_reads_adata_raw_and_keeps_the_file_as_it_was(tmp_path, capsys):
    ref = _scaled_with_raw(make_counts(seed=1))
    query = _scaled_with_raw(make_counts(n_cells=60, seed=2))
    truth = query.obs.pop("cell_type").to_numpy()
    scaled = query.X.copy()
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    argv = ["annotate", "--reference", str(tmp_path / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--query", str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "a.h5ad")]
    assert main([*argv, "--no-progress"]) == 2  # scaled X: the error names --layer raw
    assert "--layer raw" in capsys.readouterr().out
    assert main([*argv, "--layer", "raw", "--no-progress"]) == 0
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert (annotated.obs["cellformer_prediction"].to_numpy() == truth).mean() > 0.9
    assert annotated.obsm["X_cellformer"].shape == (60, 3)
    np.testing.assert_array_equal(annotated.X, scaled)  # the query file's X is not replaced
    assert annotated.raw is not None
    # a file without .raw: a clear error
    make_counts(n_cells=60, seed=2).write_h5ad(tmp_path / "plain.h5ad")
    argv[6] = str(tmp_path / "plain.h5ad")
    assert main([*argv, "--query-layer", "raw", "--layer", "raw", "--overwrite"]) == 2
    assert "no adata.raw" in capsys.readouterr().out


def test_benchmark_layer_raw(tmp_path):
    _scaled_with_raw(make_counts(n_cells=120, seed=3)).write_h5ad(tmp_path / "d.h5ad")
    out = tmp_path / "bench"
    argv = ["benchmark", "--data", str(tmp_path / "d.h5ad"), "--models", "linear"]
    argv += ["--folds", "2", "--out", str(out), "--layer", "raw"]
    assert main([*argv, "--no-progress"]) == 0
    payload = json.loads((out / "results.json").read_text())
    lin = [r["macro_f1"] for r in payload["per_fold"] if r["model"] == "linear"]
    assert len(lin) == 2 and min(lin) > 0.9  # trained on adata.raw (X is scaled: refused)


def _reference_and_query_files(tmp_path, n_reference: int) -> list[str]:
    """Write a synthetic reference and a 30-cell query; the annotate arguments reading them."""
    make_counts(n_cells=n_reference, n_genes=20, seed=1).write_h5ad(tmp_path / "ref.h5ad")
    make_counts(n_cells=30, n_genes=20, seed=2).write_h5ad(tmp_path / "q.h5ad")
    argv = ["annotate", "--reference", str(tmp_path / "ref.h5ad"), "--labels-key", "cell_type"]
    return [*argv, "--query", str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "a.h5ad")]


@pytest.mark.slow
def test_annotate_with_a_transformer(tmp_path):
    argv = _reference_and_query_files(tmp_path, n_reference=90)
    assert main([*argv, "--model", "transformer:scgpt", "--no-progress"]) == 0
    annotated = ad.read_h5ad(tmp_path / "a.h5ad")
    assert annotated.obsm["X_cellformer"].shape == (30, 64)  # the transformer's pooled output
    assert main([*argv, "--model", "transformer:nope"]) == 2


def test_annotate_model_auto_reports_the_guards_choice(tmp_path, capsys):
    argv = _reference_and_query_files(tmp_path, n_reference=120)
    assert main([*argv, "--model", "auto", "--max-epochs", "2", "--no-progress"]) == 0
    info = ad.read_h5ad(tmp_path / "a.h5ad").uns["cellformer"]
    assert info["auto"]["chosen"] in ("linear path alone", "linear path + transformer head")
    assert info["model"] == info["auto"]["model"]
    capsys.readouterr()
    assert main([*argv, "--model", "auto", "--adapt"]) == 2
    assert "--adapt" in capsys.readouterr().out


def test_annotate_missing_file(tmp_path, capsys):
    code = main(
        [
            "annotate",
            "--reference",
            str(tmp_path / "nope.h5ad"),
            "--labels-key",
            "x",
            "--query",
            "q",
            "--out",
            "o",
        ]
    )
    assert code == 2
    assert "nope.h5ad" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [["benchmark", "--folds", "x"], ["annotate"]])
def test_bad_arguments_exit_with_usage(argv):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


def test_make_counts_has_no_empty_cells():
    assert np.all(make_counts().X.sum(1) > 0)
