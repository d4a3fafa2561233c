"""What the ``cellformer`` commands do (``cli.py`` parses their arguments)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ._cli_files import (
    input_file,
    model_dir,
    output_file,
    raw_as_layer,
    read_h5ad,
    write_annotated,
    write_results_only,
)

__all__ = ["annotate", "benchmark", "console"]

# wide enough for the summary table in logs and CI, where there is no terminal to measure
console = Console(width=None if sys.stdout.isatty() else 130)


def _say(*objects) -> None:
    """Print a summary (a table, "Wrote ...") unless ``--verbosity`` is above info."""
    from ._settings import settings

    if settings.shows_info:
        console.print(*objects)


def _rich_table(df, title: str, float_fmt: str = "{:.3f}") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(df.index.name or "", style="bold")
    for col in df.columns:
        table.add_column(str(col), justify="right")
    for idx, row in df.iterrows():
        cells = [float_fmt.format(v) if isinstance(v, float) else str(v) for v in row]
        table.add_row(str(idx), *cells)
    return table


def _make_split(args, adata):
    from . import bench
    from ._core import InputError

    if args.split_key is None:
        if args.holdout:
            raise InputError("--holdout needs --split-key, the obs column with the groups.")
        return bench.StratifiedKFold(args.folds, args.seed)
    if args.split_key not in adata.obs:
        raise InputError(
            f"--split-key {args.split_key!r} is not a column of obs "
            f"(columns: {list(adata.obs.columns)[:20]})."
        )
    if args.holdout:
        return bench.LeaveOneGroupOut(args.split_key, args.holdout, seed=args.seed)
    values = set(adata.obs[args.split_key].astype(str))
    if "train" in values and "test" in values:
        return bench.PredefinedSplit(args.split_key, seed=args.seed)
    return bench.LeaveOneGroupOut(args.split_key, seed=args.seed)


def _sizes(text: str) -> list[float]:
    from ._core import InputError

    try:
        sizes = sorted({float(v) for v in text.split(",") if v.strip()})
    except ValueError as err:
        raise InputError(f"--learning-curve takes fractions like 0.1,0.5,1, got {text!r}.") from err
    if not sizes or not all(0 < v <= 1 for v in sizes):
        raise InputError(f"--learning-curve fractions must be in (0, 1], got {text!r}.")
    return sizes if 1.0 in sizes else [*sizes, 1.0]


def benchmark(args: argparse.Namespace) -> int:
    from . import bench, datasets
    from ._core import InputError, check_labels

    if args.folds < 2:
        raise InputError(f"--folds must be at least 2, got {args.folds}.")
    if args.data is not None:
        input_file(args.data, "--data")
    adata = datasets.load(args.data)
    adata, args.layer = raw_as_layer(adata, args.layer, "--layer")
    data_name = args.data or "embedded default (scanpy pbmc68k_reduced, FACS labels)"
    labels_key = args.labels_key
    labels = check_labels(adata, labels_key)
    unknown = sorted(set(args.holdout_class) - set(labels))
    if unknown:
        raise InputError(
            f"--holdout-class {', '.join(unknown)}: not a cell type of obs[{labels_key!r}] "
            f"(types: {', '.join(sorted(set(labels)))})."
        )

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    try:
        bench.parse_models(models)
    except ValueError as err:
        raise InputError(f"--models: {err}") from err
    split = _make_split(args, adata)
    sizes = args.learning_curve
    if sizes is None and args.report:
        sizes = "0.2,0.5,1"  # a report shows a learning curve; the 100% point is the main run
    sizes = _sizes(sizes) if sizes else None
    console.print(
        f"[bold]cellformer benchmark[/]: {data_name}: {adata.n_obs} cells × {adata.n_vars} genes, "
        f"labels obs['{labels_key}'], models {', '.join(models)}; {split.describe()}"
        + (f"; training sizes {', '.join(f'{v:g}' for v in sizes)}" if sizes else "")
    )
    start = time.perf_counter()
    out = Path(args.out)
    results = bench.run(
        adata,
        labels_key,
        models=models,
        split=split,
        layer=args.layer,
        train_sizes=sizes,
        out=out / "runs.json",
        resume=not args.no_resume,
        embeddings=bool(args.report),
        progress=not args.no_progress,
        label_ontology=_label_ontology(args.label_ontology),
    )
    tables = bench.result_tables(results)
    summary_table, learning = tables.pop("summary"), tables.pop("learning curve", None)
    for i, (name, df) in enumerate(tables.items()):
        console.print(_rich_table(df, f"Split {i + 1}/{len(tables)}: {name}"))
    console.print(
        _rich_table(
            summary_table, "Mean ± sd over splits (majority = always the most frequent class)"
        )
    )
    summary = bench.summarize(results)
    if learning is not None:
        console.print(_rich_table(learning, "Learning curve: macro-F1 by share of training cells"))
    n_classes = adata.obs[labels_key].nunique()
    meta = {
        "data": str(data_name),
        "n_cells": adata.n_obs,
        "n_genes": adata.n_vars,
        "n_classes": int(n_classes),
        "labels_key": labels_key,
        "layer": args.layer,
        "split": split.describe(),
        "seed": args.seed,
        "models": models,
        "train_sizes": sizes,
        "elapsed_s": time.perf_counter() - start,
    }
    if args.holdout_class:
        import pandas as pd

        held = pd.concat(
            [
                bench.holdout_class(adata, labels_key, c, models, layer=args.layer, seed=args.seed)
                for c in args.holdout_class
            ],
            ignore_index=True,
        )
        auroc = held.pivot_table(index=["model", "score"], columns="held_out", values="auroc")
        auroc["mean"] = auroc.mean(axis=1)
        auroc.index = [f"{m} · {s}" for m, s in auroc.index]
        auroc.index.name = "model · uncertainty score"
        console.print(_rich_table(auroc, "Unknown-cell detection AUROC (held-out cell type)"))
        out.mkdir(parents=True, exist_ok=True)
        held.to_json(out / "holdout.json", orient="records", indent=2)
    report = bench.write_report(results, summary, out, meta)
    written = [str(report), str(out / "results.json")]
    if args.report:
        from cellformer import pl

        figures = pl.benchmark_figures(results, args.report)
        written.append(str(bench.write_report(results, summary, args.report, meta, figures)))
    console.print(f"Wrote {', '.join(written)} ({time.perf_counter() - start:.0f} s).")
    failed = results["error"].notna().sum()
    return 1 if failed else 0


def _label_ontology(path: str | None) -> dict | None:
    """Read ``--label-ontology``: a JSON object of labels and CL IDs."""
    if path is None:
        return None
    import json

    from ._core import InputError

    try:
        mapping = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise InputError(f"--label-ontology {path} cannot be read as JSON ({err}).") from err
    if not isinstance(mapping, dict):
        raise InputError(f"--label-ontology {path} must hold a JSON object {{label: 'CL:...'}}.")
    return {str(k): str(v) for k, v in mapping.items()}


def annotate(args: argparse.Namespace) -> int:
    from ._core import InputError

    if not 0 <= args.min_gene_coverage <= 1:
        raise InputError(f"--min-gene-coverage must be in [0, 1], got {args.min_gene_coverage}.")
    if args.max_epochs is not None and args.max_epochs < 1:
        raise InputError(f"--max-epochs must be at least 1, got {args.max_epochs}.")
    # --model is checked with annotate's own helpers, before any file is read
    from .tl._annotate import is_saved_model  # cross-package: the CLI maps onto tl's helpers
    from .tl._train import model_class_of  # cross-package: as above

    saved = is_saved_model(args.model)
    if args.adapt and (saved or args.model == "auto" or model_class_of(args.model)[1] is None):
        raise InputError(
            "--adapt trains a transformer on the reference and the query: use it with "
            "--reference, --labels-key and --model transformer (or transformer:PRESET)."
        )
    inputs = []
    if saved:
        from ._utils import is_celltypist_file
        from .datasets._download import REGISTRY  # cross-package: published models' names
        from .model.base import HF_PREFIX, check_saved_model
        from .tl._trained import check_model_name  # cross-package: as for is_saved_model

        check_model_name(args.model)
        if is_celltypist_file(args.model):
            if Path(args.model).exists() or args.model not in REGISTRY:  # else: downloaded
                input_file(args.model, "--model", hdf5=False)
        elif not args.model.startswith(HF_PREFIX):
            check_saved_model(args.model, None, "LinearClassifier/CellTransformer")
        ignored = [
            flag
            for flag, given in (
                ("--reference", args.reference is not None),
                ("--labels-key", args.labels_key is not None),
                ("--max-epochs", args.max_epochs is not None),
                ("--genes", args.genes != "auto"),
            )
            if given
        ]
        if ignored:
            raise InputError(
                f"--model {args.model} is a trained model: it annotates without training, so "
                f"{', '.join(ignored)} would be ignored. Leave {'it' if len(ignored) == 1 else 'them'} "
                "out, or pass --model linear/transformer to train on a reference."
            )

    else:
        model_class_of(args.model)
        if args.reference is None or args.labels_key is None:
            raise InputError(
                "--reference and --labels-key are needed to train a model; or pass --model DIR "
                "with a saved model to annotate without training."
            )
        inputs.append(input_file(args.reference, "--reference"))
    query_path = input_file(args.query, "--query")
    inputs.insert(0, query_path)
    out = output_file(args.out, inputs, overwrite=args.overwrite)
    if args.csv is not None:
        output_file(args.csv, [*inputs, out], "--csv", ".csv", overwrite=args.overwrite)
    if args.save_model is not None:
        model_dir(args.save_model, args.overwrite)
    # the query's matrix stays on disk (predictions go chunk by chunk), except where it is
    # trained on (--adapt) or read from adata.raw
    query = read_h5ad(query_path, "--query", backed=not args.adapt)
    reference = None if saved else read_h5ad(inputs[1], "--reference")
    layer, query_layer = args.layer, args.query_layer
    if reference is not None:
        reference, layer = raw_as_layer(reference, layer, "--layer")
    if query_layer is None and args.layer == "raw" and query.raw is not None:
        query_layer = "raw"  # as --layer, when the query has it too
    if query.isbacked and query_layer == "raw" and "raw" not in query.layers:
        query = read_h5ad(query_path, "--query")
    work, query_layer = raw_as_layer(query, query_layer, "--query-layer")
    uns_before = set(query.uns)
    if args.over_clustering is not None and not args.majority_voting:
        raise InputError("--over-clustering names the clusters of --majority-voting: add it.")
    if args.over_clustering is not None and args.over_clustering not in query.obs:
        raise InputError(
            f"--over-clustering {args.over_clustering}: no such column in the query's obs "
            f"(columns: {list(map(str, query.obs.columns))})."
        )
    from . import tl
    from ._settings import settings

    start = time.perf_counter()
    tl.annotate(  # checks both data sets and their gene overlap before it trains
        work,
        reference=reference,
        labels_key=args.labels_key,
        model=args.model,
        genes=args.genes,
        layer=layer,
        query_layer=query_layer,
        library_size_key=args.library_size_key,
        query_library_size_key=args.query_library_size_key,
        max_epochs=args.max_epochs,
        majority_voting=args.majority_voting,
        reject_unknown=args.reject_unknown,
        min_gene_coverage=args.min_gene_coverage,
        key_prefix=args.key_prefix,
        seed=args.seed,
        save_model=args.save_model,
        progress=not args.no_progress and settings.shows_info,
        adapt=args.adapt,
        overwrite=args.overwrite,
        ontology=args.ontology,
        label_ontology=_label_ontology(args.label_ontology),
        over_clustering=args.over_clustering,
        trust=args.trust,
    )
    prefix = args.key_prefix
    if work is not query:  # annotated on adata.raw: the results go into the file as it was
        for key in work.obs.columns.difference(query.obs.columns):
            query.obs[key] = work.obs[key]
        for key in set(work.obsm) - set(query.obsm):
            query.obsm[key] = work.obsm[key]
        for key in set(work.uns) - set(query.uns):
            query.uns[key] = work.uns[key]
    written_keys = [str(k) for k in query.uns.get("cellformer_outputs", [])]
    obs_keys = [k.split(":", 1)[1] for k in written_keys if k.startswith("obs:")]
    obsm_keys = [k.split(":", 1)[1] for k in written_keys if k.startswith("obsm:")]
    new_uns = (set(query.uns) - uns_before) | {"cellformer", "cellformer_outputs"}
    uns_keys = sorted(k for k in new_uns if k in query.uns)
    if args.results_only:
        write_results_only(out, query, [k for k in obs_keys if k in query.obs], obsm_keys, uns_keys)
    else:  # the input file as it is, plus the results: its matrix is never loaded
        write_annotated(query_path, out, query, obsm_keys, uns_keys)
    column = f"{prefix}_majority_voting" if args.majority_voting else f"{prefix}_prediction"
    counts = query.obs[column].value_counts()
    table = Table(title=f"Predicted cell types ({query.n_obs} query cells)", title_justify="left")
    table.add_column("cell type")
    table.add_column("cells", justify="right")
    for name, n in counts.items():
        if n:
            table.add_row(str(name), str(n))
    _say(table)
    written = [str(out)]
    if args.csv is not None:
        columns = [c for c in query.obs if c.startswith(f"{prefix}_")]
        frame = query.obs[columns].copy()
        frame.index.name = "cell"
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        frame.to_csv(args.csv)
        written.append(args.csv)
    if args.save_model is not None:
        written.append(f"{args.save_model}/ (the model: reuse with --model {args.save_model})")
    _say(
        f"Wrote {', '.join(written)} in {time.perf_counter() - start:.0f} s: "
        f"obs['{prefix}_prediction'], obs['{prefix}_confidence'], obsm['X_{prefix}']."
    )
    return 0
