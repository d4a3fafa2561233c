"""The ``cellformer`` command line: ``benchmark`` and ``annotate``."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from ._cli_commands import annotate, benchmark, console

__all__ = ["main"]


EPILOG_BENCHMARK = """examples:
  cellformer benchmark
      5-fold CV of the linear model, the default transformer and scikit-learn's reference on
      the embedded PBMC data
  cellformer benchmark --models linear,transformer:geneformer,transformer:scgpt,transformer:scbert
  cellformer benchmark --data pbmc.h5ad --labels-key cell_type --layer counts --out results/
  cellformer benchmark --holdout-class B --holdout-class NK
      also: unknown-cell detection AUROC with each type held out of training
  cellformer benchmark --report report/
      a visual report: metric bars, learning curves, confusion matrices, reliability
      diagrams and UMAPs of each model's latent space (report/report.md and PNGs)
  cellformer benchmark --data atlas.h5ad --split-key donor --holdout D3
      cross-domain: train on the other donors, test on D3 (unseen cell types reported as novel)
  cellformer benchmark --data data.h5ad --split-key split
      the train/test split written in obs['split']
  cellformer benchmark --learning-curve 0.05,0.1,0.2,0.5,1
      train on growing shares of each training fold
"""

EPILOG_ANNOTATE = """examples:
  cellformer annotate --reference ref.h5ad --labels-key cell_type --query q.h5ad --out annotated.h5ad
  cellformer annotate ... --model transformer --max-epochs 20 --majority-voting --csv table.csv
  cellformer annotate ... --library-size-key nCount_RNA   # reference counts of a gene subset
  cellformer annotate ... --layer raw   # scanpy files: values in adata.raw, X scaled
  cellformer annotate ... --save-model ref_model/
  cellformer annotate --model ref_model/ --query other.h5ad --out other_annotated.h5ad
      reuse a saved model: no reference, no training
  cellformer annotate --model Immune_All_Low.pkl --query q.h5ad --out q_annotated.h5ad
      a CellTypist model (its labels and probabilities, cellformer's outputs)
  cellformer annotate --model hf:my-lab/pbmc-linear --query q.h5ad --out q_annotated.h5ad
      a model shared on the Hugging Face Hub (cached; HF_HUB_OFFLINE=1 uses the cache only)

model files and code: saved models (model.json + model.safetensors) hold no code; their
SHA-256 checksums are verified, so a damaged file is named. CellTypist .pkl files are read
by a restricted reader that refuses any import beyond scikit-learn's classifier and scaler
and numpy. Pickles from the Hub (hf:) and older saved models (model.pt) that hold more than
arrays are read only with --trust, which can run code from the file: use it only for files
from sources you trust.
  then, in Python: sc.pl.umap(adata, color="cellformer_prediction")
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``cellformer`` command."""
    parser = argparse.ArgumentParser(
        prog="cellformer",
        description="Cell-type annotation for single-cell RNA-seq, benchmarked against a linear baseline.",
    )
    parser.add_argument(
        "--verbosity",
        choices=["debug", "info", "warning", "error"],
        default=None,
        help="what cellformer prints (default: info). At warning or error: only warnings and "
        "errors, no progress bars or summary tables (cf.settings.verbosity in Python)",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="print debug information (--verbosity debug)"
    )
    parser.add_argument("--version", action="version", version=f"cellformer {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser(
        "benchmark",
        help="cross-validate models side by side and write a report",
        description="Stratified k-fold cross-validation of each model on the same folds, with the "
        "majority-class line; preprocessing is fit on each training fold only. Prints a table per "
        "fold and mean ± sd, and writes results.json and report.md.",
        epilog=EPILOG_BENCHMARK,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    b.add_argument(
        "--data", help=".h5ad file (default: the embedded pbmc68k_reduced data, offline)"
    )
    b.add_argument(
        "--labels-key", default="cell_type", help="obs column with cell types (default: cell_type)"
    )
    b.add_argument(
        "--layer",
        default=None,
        help="layer with counts or log-normalised values (default: X; 'raw': adata.raw)",
    )
    b.add_argument(
        "--models",
        default="linear,transformer,sklearn_logreg",
        help="comma-separated models: linear, transformer (default tokenizer), "
        "transformer:PRESET with PRESET in default, geneformer, scgpt, scbert, and "
        "sklearn_logreg (default: %(default)s)",
    )
    b.add_argument("--folds", type=int, default=5, help="number of CV folds (default: 5)")
    b.add_argument(
        "--split-key",
        default=None,
        help="obs column with a predefined split (values train/test[/val]) or with groups "
        "(donor, tissue, ...) to leave out one at a time, instead of k-fold CV",
    )
    b.add_argument(
        "--holdout",
        action="append",
        default=[],
        metavar="GROUP",
        help="with --split-key: hold out only this group (repeat for several)",
    )
    b.add_argument(
        "--label-ontology",
        default=None,
        metavar="JSON",
        help="also score coarse Cell Ontology answers; a JSON file {label: 'CL:...'} for "
        "labels that are not CL labels ({} when all are)",
    )
    b.add_argument(
        "--learning-curve",
        nargs="?",
        const="0.05,0.1,0.2,0.5,1",
        default=None,
        metavar="FRACTIONS",
        help="also train on these shares of each training split (default when given without "
        "a value: 0.05,0.1,0.2,0.5,1; with --report: 0.2,0.5,1)",
    )
    b.add_argument(
        "--report",
        default=None,
        metavar="DIR",
        help="write a visual report to DIR: report.md with tables and PNG figures",
    )
    b.add_argument(
        "--no-resume",
        action="store_true",
        help="start afresh instead of reusing finished rows in OUT/runs.json",
    )
    b.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    b.add_argument(
        "--out", default="cellformer_benchmark", help="output directory (default: %(default)s)"
    )
    b.add_argument(
        "--holdout-class",
        action="append",
        default=[],
        metavar="TYPE",
        help="also train each model without this cell type and report how well its uncertainty "
        "flags those cells (AUROC); repeat for several types",
    )
    b.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    b.set_defaults(func=benchmark)

    a = sub.add_parser(
        "annotate",
        help="train on a labelled reference (or load a saved model) and annotate a query",
        description="Annotate a query with a classifier trained on a labelled reference (linear "
        "by default, or a transformer), or with a saved model. Both files and their gene overlap "
        "are checked before training; when the query lacks many reference genes the model is "
        "trained on the shared genes. Writes the query with predictions, confidences, novelty "
        "and the model's cell embedding.",
        epilog=EPILOG_ANNOTATE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("--reference", default=None, help="labelled reference .h5ad")
    a.add_argument("--labels-key", default=None, help="obs column of the reference with cell types")
    a.add_argument("--query", required=True, help=".h5ad with the cells to annotate")
    a.add_argument("--out", required=True, help="path of the annotated .h5ad to write")
    a.add_argument(
        "--layer",
        default=None,
        help="reference layer with counts or log-normalised values ('raw': adata.raw, as "
        "scanpy keeps them before scaling X)",
    )
    a.add_argument(
        "--query-layer",
        default=None,
        help="query layer (default: same as --layer if present, else X; 'raw': adata.raw)",
    )
    a.add_argument(
        "--model",
        default="linear",
        help="linear (default), transformer, transformer:PRESET (geneformer, scgpt, scbert), "
        "auto (the transformer, or the linear model where the transformer's head does not beat "
        "its linear path on held-out reference cells), "
        "the directory of a saved model, a CellTypist model file (.pkl) or a model on the "
        "Hugging Face Hub (hf:ORG/NAME): the last three annotate without training",
    )
    a.add_argument(
        "--trust",
        action="store_true",
        help="also read model files that are Python pickles (a .pkl from the Hub, a model.pt "
        "saved before cellformer 0.1.0): reading them can run code, so only for files you "
        "trust (see below)",
    )
    a.add_argument(
        "--genes",
        choices=["auto", "shared", "all"],
        default="auto",
        help="train on the genes shared with the query (shared), on all reference genes (all), "
        "or shared when the query has fewer than --min-gene-coverage of them (auto, default)",
    )
    a.add_argument(
        "--min-gene-coverage",
        type=float,
        default=0.5,
        help="least share of the model's genes the query must have (default: %(default)s)",
    )
    a.add_argument(
        "--library-size-key",
        default=None,
        help="obs column with whole-transcriptome library sizes (e.g. nCount_RNA) when the "
        "counts cover a subset of genes",
    )
    a.add_argument(
        "--query-library-size-key",
        default=None,
        help="the query's obs column with whole-transcriptome library sizes, when its counts "
        "cover a gene subset (default: --library-size-key if the query has it)",
    )
    a.add_argument("--max-epochs", type=int, default=None, help="training epochs")
    a.add_argument(
        "--majority-voting",
        action="store_true",
        help="over-cluster the query (Leiden on the model's latent space) and label each "
        "cluster by its majority (per-cell labels kept); the vote's confidence is the share of "
        "the cluster's cells whose own label is the voted one",
    )
    a.add_argument(
        "--over-clustering",
        default=None,
        metavar="COLUMN",
        help="with --majority-voting: the query's own obs column of clusters to vote in "
        "(e.g. a Leiden clustering you computed), instead of over-clustering it here",
    )
    a.add_argument(
        "--results-only",
        action="store_true",
        help="write only the results (obs columns, obsm, uns) to --out, not a copy of the query",
    )
    a.add_argument(
        "--reject-unknown",
        action="store_true",
        help="label cells 'Unknown' when confidence is low or the cell is far from the "
        "reference (thresholds from a validation split)",
    )
    a.add_argument(
        "--csv", default=None, metavar="PATH", help="also write a table of the predictions"
    )
    a.add_argument("--key-prefix", default="cellformer", help="prefix of the obs/obsm keys written")
    a.add_argument(
        "--save-model", default=None, help="also save the trained model to this directory"
    )
    a.add_argument(
        "--ontology",
        action="store_true",
        help="also write coarser Cell Ontology answers for unsure cells and the CL term IDs "
        "(pip install 'cellformer[ontology]')",
    )
    a.add_argument(
        "--label-ontology",
        default=None,
        metavar="JSON",
        help="a JSON file {label: 'CL:...'} for labels that are not CL labels or synonyms",
    )
    a.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out / --csv file or --save-model directory",
    )
    a.add_argument(
        "--adapt",
        action="store_true",
        help="with --model transformer: learn from the query too (self-training pseudo-labels "
        "of its cells, on the genes it shares with the reference)",
    )
    a.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    a.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    a.set_defaults(func=annotate)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cellformer`` command."""
    args = build_parser().parse_args(argv)  # --help and --version exit here, before any import
    from ._errors import CellformerError  # (DownloadError is one)
    from ._settings import settings

    verbosity = "debug" if args.verbose else args.verbosity
    logging.basicConfig(
        level=logging.DEBUG if verbosity == "debug" else logging.WARNING,
        format="%(levelname)s: %(message)s",
    )
    if verbosity is not None:
        settings.verbosity = verbosity
    try:
        return args.func(args)
    except (CellformerError, FileNotFoundError) as err:
        _print_error(err)
        return 2
    except ImportError as err:  # an optional dependency; the message says what to install
        if "pip install" not in str(err):
            raise
        _print_error(err)
        return 2


def _print_error(err: BaseException) -> None:
    """Print an error verbatim: no rich markup read from it, no line broken inside a path."""
    from rich.text import Text

    console.print(Text.assemble(("error:", "bold red"), " ", str(err)), soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
