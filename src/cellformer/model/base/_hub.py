"""Sharing models: a model card in scvi-tools' hub layout, and ``hf:org/name`` downloads."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np

from cellformer import _core, pp

__all__ = ["HF_PREFIX", "pull_from_hub", "write_model_card"]

logger = logging.getLogger("cellformer")

#: Prefix of a Hugging Face Hub model name: ``hf:org/name`` (``hf:org/name@revision``).
HF_PREFIX = "hf:"
#: scvi-tools' hub files (``scvi.hub._constants``): its metadata and the model card.
METADATA_FILE = "_scvi_required_metadata.json"
CARD_FILE = "README.md"


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("cellformer", "scvi-tools", "anndata", "torch", "scikit-learn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _guard_lines(choice: dict | None) -> list[str]:
    """Card lines: the guard's choice between the linear path alone and the head."""
    if not choice:
        return []
    return [
        f"Predictions: **{choice['chosen']}**, chosen on the validation cells by macro-F1 "
        f"({choice['macro_f1_with_head']:.4f} with the transformer head, "
        f"{choice['macro_f1_linear_path']:.4f} of the linear path alone; the head fixes "
        f"{choice['cells_the_head_fixes']} and breaks {choice['cells_the_head_breaks']} of "
        f"{choice['validation_cells']} cells, sign test p = {choice['sign_test_p']:.2g}).",
        "",
    ]


def model_card(model, license: str | None = None) -> str:
    """Return the README.md text of a saved model: YAML metadata and a readable summary."""
    versions = _versions()
    name = type(model).__name__
    training = getattr(model, "training_summary_", None) or {}
    counts = training.get("class_counts", {})
    metrics = getattr(model, "validation_metrics_", None) or {}
    source = getattr(model, "source_", None) or {}
    genes = model.var_names
    tags = [
        "biology",
        "genomics",
        "single-cell",
        "cellformer",
        f"model_cls_name:{name}",
        f"scvi_version:{versions['scvi-tools']}",
        f"anndata_version:{versions['anndata']}",
        "modality:rna",
        "annotated:True",
    ]
    front = ["---", "library_name: scvi-tools", f"license: {license or 'other'}", "tags:"]
    front += [f"- {tag}" for tag in tags]
    front.append("---")
    origin = (
        f"Read from a CellTypist model ({source.get('classifier')}); it keeps no training cells."
        if source.get("format") == "celltypist"
        else f"Trained on {training.get('n_train_cells', 'an unknown number of')} labelled cells"
        + (
            f" ({training['n_validation_cells']} more held out for validation)."
            if training.get("n_validation_cells")
            else "."
        )
    )
    adapted = getattr(model, "adapted_to_", None)
    if adapted:
        origin += (
            f" Adapted to a query of {adapted['n_cells']} cells × {adapted['n_genes']} genes "
            f"(fingerprint {adapted['fingerprint']}): {adapted['pseudo_labelled']} of its cells "
            "were pseudo-labelled by self-training and trained on."
        )
    body = [
        f"# {name} (cellformer)",
        "",
        f"A cell-type classifier made with [cellformer](https://github.com/cellformer/cellformer): "
        f"{model.n_classes} cell types from {len(genes)} genes. {origin}",
        "",
        "## Data",
        "",
        _table(
            ["genes", "gene names", "first genes", "input", "labels column"],
            [
                [
                    len(genes),
                    pp.gene_id_kind(genes),
                    ", ".join(map(str, genes[:5])),
                    model.input_kind_,
                    f"`{model.labels_key}`",
                ]
            ],
        ),
        "",
        f"## Cell types ({model.n_classes})",
        "",
        _table(["cell type", "training cells"], [[c, counts.get(c, "n/a")] for c in model.classes]),
        "",
        "## Validation",
        "",
        (
            "CellTypist models keep no validation metrics. Their description: "
            + "; ".join(f"{k}: {v}" for k, v in source.get("description", {}).items())
            if source.get("format") == "celltypist"
            else _table(
                list(metrics),
                [[f"{v:.4g}" if isinstance(v, float) else v for v in metrics.values()]],
            )
            if metrics
            else "No validation split was held out (`train(validation_size=...)` records one)."
        ),
        "",
        *_guard_lines(getattr(model, "path_choice_", None)),
        "## Use",
        "",
        "```python",
        "import cellformer as cf",
        "",
        'cf.tl.annotate(query, model="hf:ORG/NAME")  # or the directory of this model',
        "```",
        "",
        "Gene names are matched to the query's by name (Ensembl IDs, symbols and mouse/human "
        "orthologs are mapped); genes the query lacks are treated as unmeasured.",
        "",
        "## Versions",
        "",
        _table(list(versions), [list(versions.values())]),
        "",
        "## License",
        "",
        license or "Not given by the uploader.",
        "",
    ]
    return "\n".join(front + body)


def write_model_card(model, dir_path, license: str | None = None) -> None:
    """Write README.md and scvi-tools' ``_scvi_required_metadata.json`` beside the model files.

    The layout is the one :class:`scvi.hub.HubModel` reads (``HubModel(dir_path)``), so that
    ``HubModel.push_to_huggingface_hub`` can publish the model.
    """
    versions = _versions()
    directory = Path(dir_path)
    metadata = {
        "scvi_version": versions["scvi-tools"],
        "anndata_version": versions["anndata"],
        "model_cls_name": type(model).__name__,
        "training_data_url": None,
        "model_parent_module": "cellformer.model",
    }
    (directory / METADATA_FILE).write_text(json.dumps(metadata, indent=4))
    (directory / CARD_FILE).write_text(model_card(model, license))


def class_counts(labels: np.ndarray, classes: list[str]) -> dict[str, int]:
    """Cells per class of label codes (codes past the classes, unlabelled, are not counted)."""
    counts = np.bincount(labels[labels < len(classes)], minlength=len(classes))
    return {c: int(n) for c, n in zip(classes, counts, strict=True)}


_HUB_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9_])?")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,254}")


def _valid_hub_part(part: str) -> bool:
    """Whether ``part`` is an ORG or NAME the Hub accepts (checked before the hub library)."""
    return bool(_HUB_PART.fullmatch(part)) and ".." not in part and "--" not in part


def pull_from_hub(name: str) -> Path:
    """Download (or find in Hugging Face's cache) the files of ``hf:org/name[@revision]``.

    Uses ``huggingface_hub.snapshot_download`` and its cache, so ``HF_HUB_OFFLINE=1`` and
    ``HF_HOME`` work as they do for every Hugging Face library. Errors are one clear line: an
    unknown repository, or no network and nothing cached (with what to do by hand).
    """
    repo = name[len(HF_PREFIX) :] if name.startswith(HF_PREFIX) else name
    repo, at, revision = repo.partition("@")
    parts = repo.split("/")
    if (
        len(parts) != 2
        or not all(map(_valid_hub_part, parts))
        or (at and not _REVISION.fullmatch(revision))
    ):
        raise _core.InputError(
            f"{name!r} is not a Hugging Face Hub model name: use hf:ORG/NAME[@REVISION] (e.g. "
            "hf:my-lab/pbmc-linear or hf:my-lab/pbmc-linear@v1; ORG and NAME of letters, digits, "
            "'-', '_' and '.', at most 96 characters, not starting or ending with '-' or '.')."
        )
    try:
        import huggingface_hub
        from huggingface_hub import errors
    except ImportError as err:
        raise _core.InputError(
            f"Models on the Hugging Face Hub ({name}) need huggingface_hub: "
            "pip install 'cellformer[hub]'."
        ) from err
    try:
        path = huggingface_hub.snapshot_download(repo, revision=revision or None)
    except errors.RepositoryNotFoundError as err:
        raise _core.InputError(
            f"No model {repo!r} on the Hugging Face Hub (or it is private: log in with "
            "`hf auth login`). Check the name: hf:ORG/NAME."
        ) from err
    except errors.RevisionNotFoundError as err:
        raise _core.InputError(f"The Hub model {repo!r} has no revision {revision!r}.") from err
    except (errors.LocalEntryNotFoundError, OSError) as err:
        raise _core.InputError(
            f"Cannot download {repo!r} from the Hugging Face Hub and it is not in the local "
            f"cache ({type(err).__name__}). On a machine with network access run "
            f"`hf download {repo}` (it fills the same cache; copy it here, or set HF_HOME), or "
            f"download the model's files by hand and pass their directory as model=DIR."
        ) from err
    logger.info("Hub model %s: %s", repo, path)
    return Path(path)
