"""Cell Ontology labels: term IDs, common ancestors, coarse answers, harmonised references."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from helpers import make_counts, shared_file

import cellformer as cf
from cellformer.cli import main
from cellformer.model.base import coarse_answers
from cellformer.pp import CellOntology, OntologyError

#: The PBMC data sets' labels as Cell Ontology terms (the table in the annotate tutorial).
PBMC3K_TERMS = {
    "Naive CD4 T": "CL:0000895",  # naive thymus-derived CD4-positive, alpha-beta T cell
    "Memory CD4 T": "CL:0000897",  # CD4-positive, alpha-beta memory T cell
    "CD14+ Mono": "CL:0001054",  # CD14-positive monocyte
    "B": "CL:0000236",  # B cell
    "CD8 T": "CL:0000625",  # CD8-positive, alpha-beta T cell
    "FCGR3A+ Mono": "CL:0002396",  # CD14-low, CD16-positive monocyte
    "NK": "CL:0000623",  # natural killer cell
    "DC": "CL:0000451",  # dendritic cell
    "Platelet": "CL:0000233",  # platelet
}


def small_dag() -> CellOntology:
    """cell > leukocyte > {T cell > {CD4 T, CD8 T}, B cell}; 'lymphocyte' a synonym of two."""
    terms = {
        "X:1": {"label": "cell", "ancestors": {}},
        "X:2": {"label": "leukocyte", "ancestors": {"X:1": 1}},
        "X:3": {"label": "T cell", "ancestors": {"X:2": 1, "X:1": 2}, "synonyms": ["T-cell"]},
        "X:4": {"label": "CD4 T", "ancestors": {"X:3": 1, "X:2": 2, "X:1": 3}},
        "X:5": {"label": "CD8 T", "ancestors": {"X:3": 1, "X:2": 2, "X:1": 3}},
        "X:6": {"label": "B cell", "ancestors": {"X:2": 1, "X:1": 2}, "synonyms": ["lymph"]},
        "X:7": {"label": "old", "ancestors": {"X:1": 1}, "deprecated": True},
    }
    terms["X:3"]["synonyms"].append("lymph")
    return CellOntology(terms, version="test 1")


def test_ancestors_and_names_on_a_small_dag():
    o = small_dag()
    assert o.common_ancestor(["X:4", "X:5"]) == "X:3"
    assert o.common_ancestor(["X:4", "X:6"]) == "X:2"
    assert o.common_ancestor(["X:4", "X:3"]) == "X:3"  # a term is its own ancestor
    assert o.common_ancestor(["X:5"]) == "X:5"
    assert o.is_ancestor("X:2", "X:4") and not o.is_ancestor("X:4", "X:2")
    assert o.depth("X:4") == 3 and o.depth("X:1") == 0
    assert (
        o.resolve("t-cell") == "X:3" and o.resolve("CD4 T") == "X:4" and o.resolve("X:6") == "X:6"
    )
    assert o.resolve("old") is None and o.resolve("no such cell") is None
    with pytest.raises(OntologyError, match="synonym of several terms"):
        o.resolve("lymph")
    with pytest.raises(OntologyError, match="not a term"):
        o.map_labels(["a"], {"a": "X:99"})
    mapping, unmatched = o.map_labels(["CD4 T", "weird", "a"], {"a": "X:6"})
    assert mapping == {"CD4 T": "X:4", "a": "X:6"} and unmatched == ["weird"]


def test_coarse_answers_on_a_small_dag():
    o = small_dag()
    classes = ["CD4 T", "CD8 T", "B cell", "unmapped"]
    terms = {"CD4 T": "X:4", "CD8 T": "X:5", "B cell": "X:6"}
    probs = np.array(
        [
            [0.95, 0.03, 0.02, 0.0],  # sure: the fine class
            [0.5, 0.45, 0.05, 0.0],  # CD4 or CD8 (95 %): T cell
            [0.4, 0.1, 0.45, 0.05],  # needs CD4, B and CD8: leukocyte
            [0.3, 0.0, 0.1, 0.6],  # an unmapped class in the set: Unknown
            [np.nan] * 4,  # no expression
        ]
    )
    answers, ids = coarse_answers(probs, classes, terms, o, threshold=0.9, mass=0.9)
    assert answers.tolist() == ["CD4 T", "T cell", "leukocyte", "Unknown", "Unknown"]
    assert ids.tolist() == ["X:4", "X:3", "X:2", None, None]


@pytest.fixture(scope="module")
def cl():
    pytest.importorskip("cellxgene_ontology_guide")
    return cf.pp.cell_ontology()


def test_the_real_cell_ontology(cl):
    assert cl.version == "CL v2026-03-26"
    # CD4-positive and CD8-positive, alpha-beta T cell: mature alpha-beta T cell
    assert cl.common_ancestor(["CL:0000624", "CL:0000625"]) == "CL:0000791"
    assert cl.label("CL:0000791") == "mature alpha-beta T cell"
    assert cl.resolve("B cell") == "CL:0000236" and cl.resolve("b cell") == "CL:0000236"
    for term in PBMC3K_TERMS.values():
        assert term in cl.terms
    assert cl.is_ancestor("CL:0000084", "CL:0000895")  # T cell above naive CD4 T
    with pytest.raises(OntologyError, match="not a term"):
        cl.label("CL:9999999")


def test_an_obsolete_term_is_refused_with_its_replacement(cl):
    obsolete = next(
        t
        for t, m in cl.terms.items()
        if m.get("deprecated") and m.get("replaced_by", "")[:3] == "CL:"
    )
    replacement = cl.terms[obsolete]["replaced_by"]
    for call in (
        lambda: cl.map_labels(["my cells"], {"my cells": obsolete}),
        lambda: cl.resolve(obsolete),
    ):
        with pytest.raises(OntologyError, match=f"obsolete.*replacement {replacement}"):
            call()
    assert cl.map_labels(["B cell"])[0] == {"B cell": "CL:0000236"}  # current terms still map


def test_predict_with_ontology_on_real_pbmc(cl, tmp_path):
    data = ad.read_h5ad(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    cells = np.random.default_rng(0).permutation(data.n_obs)
    reference, query = data[np.sort(cells[:1800])].copy(), data[np.sort(cells[1800:])].copy()
    cf.model.LinearClassifier.setup_anndata(reference, labels_key="cell_type")
    model = cf.model.LinearClassifier(reference)
    model.train(enable_progress_bar=False, validation_size=0.1)
    with pytest.raises(OntologyError, match="does not predict"):
        model.set_label_ontology({"Platypus": "CL:0000236"})
    assert model.set_label_ontology(PBMC3K_TERMS) == PBMC3K_TERMS
    model.predict(query, ontology=True, ontology_threshold=0.5)
    obs = query.obs
    fine = obs["cellformer_prediction"].astype(str)
    coarse = obs["cellformer_prediction_coarse"].astype(str)
    sure = obs["cellformer_confidence"] >= 0.5
    assert (coarse[sure] == fine[sure]).all()  # sure cells keep their class
    assert (coarse[~sure] != fine[~sure]).mean() > 0.5  # unsure ones mostly get a coarser term
    terms = obs["cellformer_prediction_coarse_ontology_term_id"].astype(str)
    scores = cf.pp.ontology_scores(obs["cell_type"], terms, PBMC3K_TERMS, cl)
    plain = cf.pp.ontology_scores(obs["cell_type"], fine, PBMC3K_TERMS, cl)
    assert scores["ontology_accuracy"] > plain["ontology_accuracy"]  # coarse answers are right
    assert scores["mean_depth"] < plain["mean_depth"]
    fine_terms = obs["cellformer_prediction_ontology_term_id"].astype(str)
    assert (fine_terms == fine.map(PBMC3K_TERMS)).all()
    query.write_h5ad(tmp_path / "q.h5ad")  # the columns read back
    model.save(tmp_path / "m")
    loaded = cf.model.LinearClassifier.load(tmp_path / "m")
    assert loaded.label_ontology_["terms"] == PBMC3K_TERMS
    loaded.label_ontology_ = {**loaded.label_ontology_, "version": "CL v2000-01-01"}
    with pytest.raises(OntologyError, match="set_label_ontology"):
        loaded.predict(query.copy(), ontology=True)


def test_harmonize_two_references(cl):
    pbmc68k = cf.datasets.pbmc68k_reduced()
    terms_68k = {
        "CD19+ B": "CL:0000236",
        "CD14+ Monocyte": "CL:0001054",
        "CD8+ Cytotoxic T": "CL:0000794",
        "CD56+ NK": "CL:0000623",
        "Dendritic": "CL:0000451",
    }
    table = cf.pp.harmonize_labels(
        ["B", "CD8 T", "NK", "Platelet"],
        pbmc68k,
        labels_key="cell_type",
        label_ontology={**PBMC3K_TERMS, **terms_68k},
    )
    rows = {(r.label_a, r.label_b): r.relation for r in table.itertuples()}
    assert rows[("B", "CD19+ B")] == "equal"
    assert rows[("CD8 T", "CD8+ Cytotoxic T")] == "b within a"  # cytotoxic CD8 within CD8
    unmatched = set(table.loc[table.relation == "unmatched", "label_b"].dropna())
    assert "CD34+" in unmatched and "CD19+ B" not in unmatched
    with pytest.raises(cf.InputError, match="label column"):
        cf.pp.harmonize_labels(pbmc68k, ["B"])


def test_annotate_and_cli_with_ontology(cl, tmp_path):
    reference = make_counts(n_cells=120, n_genes=30)
    names = {"type_0": "B cell", "type_1": "CD4-positive, alpha-beta T cell", "type_2": "x"}
    reference.obs["cell_type"] = reference.obs["cell_type"].map(names).astype("category")
    query = make_counts(n_cells=60, n_genes=30, seed=3)
    del query.obs["cell_type"]
    out = cf.tl.annotate(
        query.copy(),
        reference=reference,
        labels_key="cell_type",
        ontology=True,
        label_ontology={"x": "CL:0000625"},
        progress=False,
    )
    assert "cellformer_prediction_coarse" in out.obs
    ids = set(out.obs["cellformer_prediction_ontology_term_id"].astype(str))
    assert ids <= {"CL:0000236", "CL:0000624", "CL:0000625"}
    reference.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    (tmp_path / "terms.json").write_text(json.dumps({"x": "CL:0000625"}))
    argv = ["annotate", "--reference", str(tmp_path / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--query", str(tmp_path / "q.h5ad"), "--out", str(tmp_path / "o.h5ad")]
    assert main([*argv, "--ontology", "--label-ontology", str(tmp_path / "terms.json")]) == 0
    written = ad.read_h5ad(tmp_path / "o.h5ad").obs
    assert isinstance(written["cellformer_prediction_coarse"].dtype, pd.CategoricalDtype)
    bench = ["benchmark", "--data", str(tmp_path / "ref.h5ad"), "--labels-key", "cell_type"]
    bench += ["--models", "linear", "--folds", "2", "--out", str(tmp_path / "b"), "--no-progress"]
    assert main([*bench, "--label-ontology", str(tmp_path / "terms.json")]) == 0
    rows = json.loads((tmp_path / "b" / "runs.json").read_text())["rows"]
    assert all("ontology_accuracy" in r for r in rows if r["model"] == "linear")
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert main([*argv, "--overwrite", "--label-ontology", str(tmp_path / "bad.json")]) == 2


def test_bench_scores_coarse_answers(cl, tmp_path):
    adata = make_counts(n_cells=120, n_genes=30)
    names = {"type_0": "B cell", "type_1": "CD4-positive, alpha-beta T cell", "type_2": "CD8"}
    adata.obs["cell_type"] = adata.obs["cell_type"].map(names).astype("category")
    frame = cf.bench.run(
        adata,
        "cell_type",
        ["linear"],
        split="kfold:2",
        label_ontology={"CD8": "CL:0000625"},
        ontology_threshold=0.99,
        progress=False,
    )
    linear = frame[frame.model == "linear"]
    assert (linear["ontology_accuracy"] >= linear["ontology_accuracy_fine"]).all()
    assert (linear["ontology_fine_share"] < 1).all()  # a high threshold: some coarse answers
    assert (linear["ontology_mean_depth"] > 0).all()
    assert (linear["ontology_mean_depth"] <= linear["ontology_fine_depth"]).all()
    # the plot of accuracy against depth, and the report links it
    import matplotlib

    matplotlib.use("Agg")
    ax = cf.pl.ontology_depth(frame)
    assert ax.get_xlabel().startswith("mean depth") and len(ax.collections) == 2
    assert "linear" in ax.get_legend().get_texts()[0].get_text()
    figures = cf.pl.benchmark_figures(frame, tmp_path)
    assert figures["ontology"] == ["ontology_depth.png"]
    report = cf.bench.write_report(frame, cf.bench.summarize(frame), tmp_path, {}, figures)
    assert "ontology_depth.png" in report.read_text()
    with pytest.raises(KeyError, match="label_ontology"):
        cf.pl.ontology_depth(frame.drop(columns=["ontology_accuracy"]))
    # the summary (and the command line's table) carries the ontology scores
    summary = cf.bench.summarize(frame)
    assert {"ontology_accuracy_mean", "ontology_fine_share_std"} <= set(summary.columns)
    from cellformer.bench._report import format_summary

    table = format_summary(summary)
    assert "±" in table.loc["linear", "ontology_accuracy"]
    plain = cf.bench.summarize(frame.drop(columns=["ontology_accuracy"]))
    assert "ontology_accuracy_mean" not in plain
