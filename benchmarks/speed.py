"""Side-by-side fit and predict cost of the linear baseline, scikit-learn and the transformer.

Same fold, one process: scikit-learn's LogisticRegression (C fixed and LogisticRegressionCV),
CellTypist when installed, LinearClassifier (C fixed and C="auto"), the default CellTransformer.
Fit seconds (after one untimed small fit of each kind), predict cells/s (the best of three
calls after a warm-up), macro-F1, peak RSS increase; the achieved GFLOP/s of the
transformer's fit and prediction against a matmul peak measured in the same run; with
``--profile`` a cProfile breakdown of a second fit (where the time goes).

    OMP_NUM_THREADS=2 python benchmarks/speed.py [--data PATH] [--device cpu|cuda] [--out speed.json]
        [--profile] [--bf16]
"""

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from sklearn.metrics import f1_score
from sklearn.model_selection import StratifiedKFold

import cellformer as cf
from cellformer.bench._models import SklearnLogisticRegression

DEFAULT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc3k_seurat_2000hvg.h5ad"
#: the transformer's training minibatch (its default), also used to count the fit's FLOPs
BATCH_SIZE = 64
#: Timed prediction calls per model (the fastest is reported, after one warm-up call).
REPEATS = 3
#: cellformer functions whose cumulative time the profile reports
STAGES = {
    "_fit_linear_path": "linear path fit (L-BFGS, C by CV)",
    "fit_statistics": "tokenizer statistics (medians, HVGs)",
    "fit_novelty": "novelty score fit",
    "fit_unknown_threshold": "Unknown thresholds (validation predictions)",
    "training_step": "training steps (forward + backward)",
    "validation_step": "validation steps",
    "tokens": "tokenisation inside forward passes",
    "_get_inference_input": "minibatch log-normalisation",
}


def matmul_peak(device: str, n: int = 1024, repeats: int = 20) -> float:
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def timed(fn):
    rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start, (psutil.Process().memory_info().rss - rss) / 2**20


def warm_up(train, labels_key: str, accelerator: str) -> None:
    """Fit each kind once, small and untimed.

    One-time costs (imports, the first Lightning trainer, scikit-learn's and BLAS's first calls:
    ~4 s for LogisticRegressionCV alone) are then not charged to whichever model runs first.
    """
    small = train[: min(300, train.n_obs)].copy()
    SklearnLogisticRegression().fit(small, labels_key)
    for cls in (cf.model.LinearClassifier, cf.model.CellTransformer):
        cls.setup_anndata(small, labels_key=labels_key)
        kwargs = {"max_epochs": 1} if cls is cf.model.CellTransformer else {}
        cls(small).train(enable_progress_bar=False, accelerator=accelerator, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DEFAULT) if DEFAULT.exists() else None)
    parser.add_argument("--labels-key", default="cell_type")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="speed.json")
    parser.add_argument("--profile", action="store_true", help="profile a second transformer fit")
    parser.add_argument("--bf16", action="store_true", help="also fit with bf16-mixed precision")
    args = parser.parse_args()
    data = cf.datasets.load(args.data)
    y = data.obs[args.labels_key].astype(str).to_numpy()
    tr, te = next(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros(len(y)), y))
    train, test = data[tr].copy(), data[te].copy()
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    rows, profile = [], None
    warm_up(train, args.labels_key, accelerator)

    def row(name, fit, predict):
        model, fit_s, mem = timed(fit)
        pred = predict(model)  # a warm-up call; then the best of REPEATS (timeit's convention)
        pred_s = min(timed(lambda: predict(model))[1] for _ in range(REPEATS))
        rows.append(
            {
                "model": name,
                "fit_s": fit_s,
                "predict_cells_per_s": len(te) / pred_s,
                "macro_f1": f1_score(y[te], np.asarray(pred).astype(str), average="macro"),
                "peak_rss_increase_mb": mem,
            }
        )
        print(
            pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1),
            flush=True,
        )
        return model

    for C in (0.1, "auto"):
        row(
            f"scikit-learn LR (C={C})",
            lambda C=C: SklearnLogisticRegression(C=C).fit(train, args.labels_key),
            lambda m: m.predict(test),
        )
    try:
        import celltypist  # noqa: F401

        print("CellTypist is installed but not wired in yet; skipped.")
    except ImportError:
        print("CellTypist not installed (optional): skipped.")
    for C in (0.1, "auto"):

        def fit_linear(C=C):
            t = train.copy()
            cf.model.LinearClassifier.setup_anndata(t, labels_key=args.labels_key)
            m = cf.model.LinearClassifier(t, C=C)
            m.train(enable_progress_bar=False, accelerator=accelerator)
            return m

        row(f"LinearClassifier (C={C})", fit_linear, lambda m: m.predict(test, key_prefix=None))

    def fit_transformer(profiler=None, **train_kwargs):
        t = train.copy()
        cf.model.CellTransformer.setup_anndata(t, labels_key=args.labels_key)
        m = cf.model.CellTransformer(t)
        if profiler is not None:
            profiler.enable()
        m.train(
            batch_size=BATCH_SIZE,
            enable_progress_bar=False,
            accelerator=accelerator,
            **train_kwargs,
        )
        if profiler is not None:
            profiler.disable()
        return m

    name = "CellTransformer (default)"
    model = row(name, fit_transformer, lambda m: m.predict(test, key_prefix=None))
    if args.bf16:
        row(
            "CellTransformer (bf16-mixed)",
            lambda: fit_transformer(precision="bf16-mixed"),
            lambda m: m.predict(test, key_prefix=None),
        )
    table = pd.DataFrame(rows).set_index("model")
    ref = table.loc["scikit-learn LR (C=0.1)", "fit_s"]
    table["fit_vs_sklearn"] = table["fit_s"] / ref
    print(table.round(3).to_string())

    profile = {}
    if args.profile:  # a second fit under cProfile (which slows it): where the time goes
        profiler = cProfile.Profile()
        _, profiled_s, _ = timed(lambda: fit_transformer(profiler))
        stats = pstats.Stats(profiler)
        for (file, _, func), (_, _, _, cumulative, _) in stats.stats.items():
            if func in STAGES and "cellformer" in file:
                profile[STAGES[func]] = profile.get(STAGES[func], 0.0) + cumulative
        print("\nWhere a CellTransformer fit spends its time (cumulative seconds; stages nest):")
        for stage, seconds in sorted(profile.items(), key=lambda kv: -kv[1]):
            print(f"  {stage:50s} {seconds:7.1f} s  ({100 * seconds / profiled_s:4.0f} %)")

    config = model.tokenizer.config
    tokens = float((~torch.as_tensor(model.tokenize(test)["padding_mask"])).sum(1).float().mean())
    flops = model._flops_per_cell(tokens)
    train_tokens = min(tokens, config.train_max_length or tokens)
    # optimiser steps: forward + backward ~ 3 forward passes of batch_size cells each
    steps = model.trainer.global_step if model.trainer is not None else 0
    train_flops = 3 * model._flops_per_cell(train_tokens) * BATCH_SIZE * steps
    fit_s = float(table.loc[name, "fit_s"])
    peak = matmul_peak(args.device)
    predict_rate = float(table.loc[name, "predict_cells_per_s"])
    print(
        f"\n{flops:.3g} FLOPs per cell forward ({tokens:.0f} tokens at prediction, "
        f"{train_tokens:.0f} in training); matmul peak {peak:.1f} GFLOP/s.\n"
        f"prediction: {predict_rate * flops / 1e9:.2f} GFLOP/s "
        f"({100 * predict_rate * flops / 1e9 / peak:.1f} % of peak); "
        f"fit: {steps} steps, {train_flops / fit_s / 1e9:.2f} GFLOP/s over the whole fit "
        f"({100 * train_flops / fit_s / 1e9 / peak:.1f} % of peak)."
    )
    Path(args.out).write_text(
        json.dumps(
            {
                "rows": rows,
                "profile_s": profile,
                "flops_per_cell": flops,
                "train_gflops_per_s": train_flops / fit_s / 1e9,
                "matmul_peak_gflops": peak,
                "device": args.device,
                "data": str(args.data or "embedded pbmc68k_reduced"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
