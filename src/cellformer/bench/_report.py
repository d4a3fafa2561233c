"""Write benchmark results as JSON and a markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ._metrics import EXTRA, ONTOLOGY_SCORES, REPORTED, SCORES
from ._results import at_train_size, finished

__all__ = [
    "format_per_fold",
    "format_summary",
    "format_value",
    "learning_table",
    "result_tables",
    "write_report",
]


#: Number formats of the cost columns (scores use three decimals).
COST_FORMATS = {
    "n_params": "{:,.0f}",
    "train_s": "{:.1f}",
    "predict_cells_per_s": "{:,.0f}",
    "peak_memory_mb": "{:,.0f}",
}


def format_value(column: str, value) -> str:
    """Format a metric value for tables (``-`` for missing)."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return "-"
    return COST_FORMATS.get(column, "{:.3f}").format(value)


def format_summary(summary: pd.DataFrame, metrics=SCORES) -> pd.DataFrame:
    """Per model: ``mean ± sd`` of the scores, the mean of the cost columns."""
    out = pd.DataFrame(index=summary.index)
    for m in metrics:
        out[m] = [
            f"{a:.3f} ± {b:.3f}"
            for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"].fillna(0), strict=True)
        ]
    for m in EXTRA:
        out[m] = [format_value(m, v) for v in summary[f"{m}_mean"]]
    for m in ONTOLOGY_SCORES:  # with label_ontology: coarse Cell Ontology answers
        if f"{m}_mean" in summary:
            pairs = zip(summary[f"{m}_mean"], summary[f"{m}_std"].fillna(0), strict=True)
            out[m] = [f"{a:.3f} ± {b:.3f}" for a, b in pairs]
    return out


def format_per_fold(results: pd.DataFrame) -> pd.DataFrame:
    """One row per fold × model with formatted metric columns."""
    per_fold = results.set_index(["fold", "model"]).reindex(columns=list(REPORTED))
    per_fold = per_fold.apply(lambda col: [format_value(col.name, v) for v in col])
    per_fold.index = [f"{f} · {m}" for f, m in per_fold.index]
    per_fold.index.name = "fold · model"
    return per_fold


def result_tables(results: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Return the tables ``cellformer benchmark`` prints, formatted: per split, then the summary.

    Keys: each split's name (its models' scores and costs at the full training size) and
    ``"summary"`` (mean ± sd over splits, see :func:`summarize`); ``"learning curve"`` too when
    ``results`` hold several training sizes (see :func:`learning_table`).
    """
    from ._results import summarize

    tables = {}
    for name, df in at_train_size(results).groupby("split", sort=False):
        df = df.set_index("model").reindex(columns=list(REPORTED))
        tables[name] = df.apply(lambda col: [format_value(col.name, v) for v in col])
    summary = format_summary(summarize(results))
    summary.index.name = "model"
    tables["summary"] = summary
    learning = learning_table(results)
    if learning is not None:
        tables["learning curve"] = learning
    return tables


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def learning_table(results: pd.DataFrame, metric: str = "macro_f1") -> pd.DataFrame | None:
    """Mean ± sd of ``metric`` per model (rows) and training size (columns); ``None`` with one size."""
    ok = finished(results)
    if "train_size" not in ok or ok["train_size"].nunique() < 2:
        return None
    agg = ok.groupby(["model", "train_size"], sort=False).agg(
        n_train=("n_train", "mean"), mean=(metric, "mean"), sd=(metric, "std")
    )
    cells = agg.apply(
        lambda r: f"{r['mean']:.3f} ± {0 if pd.isna(r['sd']) else r['sd']:.3f}", axis=1
    )
    table = cells.unstack("train_size")
    n_train = agg["n_train"].groupby("train_size").mean()
    table.columns = [f"{size:g} ({n_train[size]:.0f} cells)" for size in table.columns]
    table.index.name = "model"
    return table


def write_report(
    results: pd.DataFrame,
    summary: pd.DataFrame,
    out_dir: str | Path,
    meta: dict,
    figures: dict[str, list[str]] | None = None,
) -> Path:
    """Write ``results.json`` and ``report.md`` into ``out_dir``.

    ``results`` are the rows of :func:`~cellformer.bench.run`, ``summary`` their
    :func:`~cellformer.bench.summarize`; ``meta`` describes the data and the split.
    ``figures``: what :func:`cellformer.pl.benchmark_figures` drew into the same directory
    (PNG file names by kind), linked from the report.

    Examples
    --------
    >>> figures = cf.pl.benchmark_figures(results, "report/")
    >>> cf.bench.write_report(results, cf.bench.summarize(results), "report/", meta, figures)
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "per_fold": json.loads(results.to_json(orient="records")),
        "summary": json.loads(summary.reset_index().to_json(orient="records")),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    per_fold = format_per_fold(at_train_size(results))
    table = format_summary(summary)
    table.index.name = "model"
    split = meta.get("split") or results.attrs.get("split", "")
    text = [
        "# cellformer benchmark",
        "",
        f"- data: {meta.get('data')} ({meta.get('n_cells')} cells × {meta.get('n_genes')} genes, "
        f"{meta.get('n_classes')} cell types in `obs['{meta.get('labels_key')}']`)",
        f"- split: {split}; every preprocessing and tokenizer statistic is fit on the training "
        "cells of each split only",
        "- `majority` predicts the training split's most frequent class everywhere; "
        "`pred_entropy_bits` near 0 means a model predicts one class",
        "",
        "## Mean ± sd over splits",
        "",
        _markdown(table),
        "",
    ]
    drawn = figures or {}
    for name in drawn.get("metric_bars", []):
        text += [f"![macro-F1 per split]({name})", ""]
    learning = learning_table(results)
    if learning is not None:
        text += ["## Learning curve (macro-F1 by share of each training split)", ""]
        text += [_markdown(learning), ""]
        text += [f"![learning curve]({name})" for name in drawn.get("learning_curve", [])] + [""]
    for kind, title in (
        ("ontology", "Cell Ontology: accuracy against the depth of the answers"),
        ("confusion", "Confusion matrices (pooled over splits)"),
        ("reliability", "Reliability diagrams"),
        ("umap", "Latent spaces of the first split's test cells"),
    ):
        if drawn.get(kind):
            text += [f"## {title}", ""] + [f"![{kind}]({n})" for n in drawn[kind]] + [""]
    text += ["## Per split", "", _markdown(per_fold), ""]
    if "n_novel" in results and results["n_novel"].fillna(0).gt(0).any():
        text += [
            "Test cells of types absent from a split's training cells are *novel*: left out of "
            "the scores above; `novel_flagged` is the share of them a model called Unknown.",
            "",
        ]
    if results["error"].notna().any():
        errors = results[results["error"].notna()]
        text += (
            ["## Failures", ""]
            + [f"- {r.split}, {r.model}: {r.error}" for r in errors.itertuples()]
            + [""]
        )
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path
