"""Write benchmark results as JSON and a markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ._metrics import EXTRA, REPORTED, SCORES

__all__ = ["format_per_fold", "format_summary", "format_value", "write_report"]


#: Number formats of the cost columns (scores use three decimals).
COST_FORMATS = {"n_params": "{:,.0f}", "train_s": "{:.1f}", "predict_cells_per_s": "{:,.0f}"}


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
    return out


def format_per_fold(results: pd.DataFrame) -> pd.DataFrame:
    """One row per fold × model with formatted metric columns."""
    per_fold = results.set_index(["fold", "model"])[list(REPORTED)]
    per_fold = per_fold.apply(lambda col: [format_value(col.name, v) for v in col])
    per_fold.index = [f"{f} · {m}" for f, m in per_fold.index]
    per_fold.index.name = "fold · model"
    return per_fold


def _markdown(df: pd.DataFrame) -> str:
    cols = [str(df.index.name or "")] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join([str(idx)] + [str(v) for v in row]) + " |")
    return "\n".join(lines)


def write_report(
    results: pd.DataFrame, summary: pd.DataFrame, out_dir: str | Path, meta: dict
) -> Path:
    """Write ``results.json`` (per fold, summary, run metadata) and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        "meta": meta,
        "per_fold": json.loads(results.to_json(orient="records")),
        "summary": json.loads(summary.reset_index().to_json(orient="records")),
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    per_fold = format_per_fold(results)
    table = format_summary(summary)
    table.index.name = "model"
    text = [
        "# cellformer benchmark",
        "",
        f"- data: {meta.get('data')} ({meta.get('n_cells')} cells × {meta.get('n_genes')} genes, "
        f"{meta.get('n_classes')} cell types in `obs['{meta.get('labels_key')}']`)",
        f"- split: stratified {meta.get('n_folds')}-fold CV, seed {meta.get('seed')}; every "
        "preprocessing statistic is fit on the training fold only",
        "- `majority` predicts the training fold's most frequent class everywhere; "
        "`pred_entropy_bits` near 0 means a model predicts one class",
        "",
        "## Mean ± sd over folds",
        "",
        _markdown(table),
        "",
        "## Per fold",
        "",
        _markdown(per_fold),
        "",
    ]
    if results["error"].notna().any():
        errors = results[results["error"].notna()][["fold", "model", "error"]]
        text += (
            ["## Failures", ""]
            + [f"- fold {r.fold}, {r.model}: {r.error}" for r in errors.itertuples()]
            + [""]
        )
    path = out / "report.md"
    path.write_text("\n".join(text))
    return path
