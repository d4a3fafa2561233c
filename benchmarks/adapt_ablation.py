"""Which self-training settings help: an ablation of ``cf.tl.annotate(..., adapt=True)``.

On the shift tasks of ``benchmarks/shift.py`` (same references and queries), the adapted
transformer with the rounds of self-training and the share of each predicted class that is
pseudo-labelled varied, beside the pseudo-labelling regression alone (its last round's
predictions: what the transformer's linear path starts from) and the unadapted models.
Prints a table and writes JSON.

    python benchmarks/adapt_ablation.py --tasks pbmc3k_to_68k pbmc68k_to_3k --seeds 0
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

VARIANTS = {  # name: (rounds, share)
    "adapt r1 s0.5": (1, 0.5),
    "adapt r2 s0.5 (default)": (2, 0.5),
    "adapt r3 s0.5": (3, 0.5),
    "adapt r2 s0.8": (2, 0.8),
    "adapt r2 s0.3": (2, 0.3),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["pbmc3k_to_68k", "pbmc68k_to_3k"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="benchmarks/results/adapt_ablation")
    args = parser.parse_args()

    import logging

    import numpy as np
    import pandas as pd
    from shift import make_task

    import cellformer as cf
    from cellformer.model.base import _adapt
    from cellformer.tl._annotate import prepare_reference

    logging.getLogger("cellformer").setLevel(logging.ERROR)
    original = _adapt.pseudo_label
    rows = []
    for task in args.tasks:
        for seed in args.seeds:
            ref, query, labels_key, ref_key, query_key = make_task(task, seed)
            truth = query.obs[labels_key].astype(str).to_numpy()
            query = query.copy()
            del query.obs[labels_key]

            def score(name, pred, seconds, task=task, seed=seed, truth=truth):
                metrics = cf.bench.classification_metrics(truth, pred)
                rows.append(
                    {
                        "task": task,
                        "seed": seed,
                        "variant": name,
                        "macro_f1": metrics["macro_f1"],
                        "accuracy": metrics["accuracy"],
                        "fit_s": seconds,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)

            # the pseudo-labelling regression alone: one more fit on its final labels
            start = time.perf_counter()
            train_on, key, _ = prepare_reference(
                ref, query, labels_key, None, "shared", ref_key, 0.5
            )
            data = _adapt.adaptation_data(train_on, labels_key, None, key, query, None, query_key)
            labels, _ = original(data, rounds=2, share=0.5, seed=seed)
            data.obs[_adapt.ADAPT_LABELS] = labels
            cf.model.LinearClassifier.setup_anndata(
                data, labels_key=_adapt.ADAPT_LABELS, unlabeled_category=_adapt.UNLABELLED
            )
            lin = cf.model.LinearClassifier(data)
            lin.train(enable_progress_bar=False, seed=seed, novelty=False)
            is_query = np.flatnonzero(data.obs["cellformer_origin"].to_numpy() == "query")
            pred = lin.predict(data, key_prefix=None, indices=is_query)
            score("self-trained regression alone", pred, time.perf_counter() - start)
            for name, (rounds, share) in {
                "transformer (no adaptation)": (0, 0),
                **VARIANTS,
            }.items():
                q = query.copy()
                _adapt.pseudo_label = functools.partial(original, rounds=rounds, share=share)
                start = time.perf_counter()
                cf.tl.annotate(
                    q,
                    reference=ref,
                    labels_key=labels_key,
                    model="transformer",
                    adapt=rounds > 0,
                    genes="shared",
                    library_size_key=ref_key,
                    query_library_size_key=query_key,
                    seed=seed,
                    progress=False,
                )
                _adapt.pseudo_label = original
                score(
                    name,
                    q.obs["cellformer_prediction"].astype(str).to_numpy(),
                    time.perf_counter() - start,
                )
    table = (
        pd.DataFrame(rows)
        .groupby(["task", "variant"], sort=False)[["macro_f1", "accuracy", "fit_s"]]
        .mean()
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapt_ablation.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
