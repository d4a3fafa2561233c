"""Write benchmark results as JSON and a markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ._metrics import EXTRA, REPORTED, SCORES

__all__ = ["format_summary", "write_report"]


def format_summary(summary: pd.DataFrame, metrics=SCORES) -> pd.DataFrame:
    """``mean ± sd`` strings per model and metric."""
    out = pd.DataFrame(index=summary.index)
    for m in [*metrics, *EXTRA]:
        out[m] = [
            f"{a:.3f} ± {b:.3f}"
            for a, b in zip(summary[f"{m}_mean"], summary[f"{m}_std"].fillna(0), strict=True)
        ]
    return out


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
    per_fold = results.set_index(["fold", "model"])[list(REPORTED)].round(4)
    per_fold.index = [f"{f} · {m}" for f, m in per_fold.index]
    per_fold.index.name = "fold · model"
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
