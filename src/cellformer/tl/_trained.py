"""Loading a trained model for ``tl.annotate``: a saved folder, a CellTypist file, the Hub."""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from cellformer import _core

__all__ = ["check_model_name", "load_saved", "load_trained"]


def _downloads():
    """Return the data registry module (published CellTypist models among its files), lazily.

    ``cellformer.datasets`` imports scanpy (about a second): not at ``import cellformer.tl``.
    """
    from cellformer.datasets import _download  # cross-package: published models (no public list)

    return _download


def check_model_name(source) -> None:
    """Catch the near misses in a model's name, with the name that was probably meant.

    A Hub prefix in another case (``HF:org/name``); a published CellTypist model named in
    another case or with a typo (``immune_all_low.pkl``, ``Immune_All_Lo.pkl``) or with
    ``.pickle``, when no such local file exists.
    """
    import difflib

    from cellformer.model.base import HF_PREFIX

    if not isinstance(source, str):
        return
    if source[:3].lower() == HF_PREFIX and not source.startswith(HF_PREFIX):
        raise _core.InputError(
            f"{source!r}: Hugging Face Hub models are named with a lower-case prefix; did you "
            f"mean {HF_PREFIX + source[3:]!r}?"
        )
    path = Path(source)
    if path.exists() or path.suffix.lower() not in (".pkl", ".pickle"):
        return
    registry = _downloads().REGISTRY
    if path.name in registry:
        return
    published = [n for n in registry if n.lower().endswith(".pkl")]
    wanted = path.stem.lower() + ".pkl"
    same = [n for n in published if n.lower() == wanted]
    close = same or difflib.get_close_matches(path.stem + ".pkl", published, n=3, cutoff=0.8)
    if close:
        raise _core.InputError(
            f"No file {source!r}, and no published CellTypist model of that name; did you mean "
            f"{' or '.join(map(repr, close))}? (Published names are matched exactly; known: "
            f"{', '.join(sorted(published))}.)"
        )


def load_trained(source, query: ad.AnnData, min_gene_coverage: float, trust: bool = False):
    """Load a trained model: a saved model's directory, a CellTypist ``.pkl`` or ``hf:ORG/NAME``.

    A Hub model's files are either a saved cellformer model or one CellTypist ``.pkl``. From the
    Hub only the safe format (``model.json`` + ``model.safetensors``) loads without ``trust``:
    a pickle there (a CellTypist ``.pkl``, an older ``model.pt``) is refused unless ``trust``.
    """
    from cellformer._utils import is_celltypist_file
    from cellformer.model import LinearClassifier
    from cellformer.model.base import HF_PREFIX, holds_saved_model, pull_from_hub

    check_model_name(source)
    if isinstance(source, str) and source.startswith(HF_PREFIX):
        path = pull_from_hub(source)
        safe = (path / "model.json").is_file()
        if not holds_saved_model(path):
            pickles = sorted(path.glob("*.pkl"))
            if len(pickles) != 1:
                raise _core.InputError(
                    f"The Hub model {source} holds neither a saved cellformer model (model.json) "
                    f"nor one CellTypist .pkl (files: {', '.join(p.name for p in path.iterdir())})."
                )
            path = pickles[0]
        if not safe and not trust:
            raise _core.UnsafeFileError(
                f"The Hub model {source} is a Python pickle ({path.name}): reading it can run "
                "code from whoever uploaded it, so cellformer reads pickles from the Hub only "
                "with trust=True (command line: --trust). Pass it if you trust the uploader; a "
                "cellformer model saved by 0.1.0 or later (model.json + model.safetensors) needs "
                "no trust."
            )
    else:
        path = Path(source)
    if is_celltypist_file(path) and not path.exists() and str(source) == path.name:
        registry = _downloads()
        if path.name in registry.REGISTRY:  # a published model by name: download once, cache
            path = registry.fetch(path.name)
    if is_celltypist_file(path):
        model = LinearClassifier.from_celltypist(path, trust=trust)
        model._resolve(query, None, min_gene_coverage=min_gene_coverage)  # coverage, now
        return model
    return load_saved(path, query, min_gene_coverage, trust)


def load_saved(path, query: ad.AnnData, min_gene_coverage: float, trust: bool = False):
    """Load a saved cellformer model with the class that saved it."""
    import cellformer.model  # (importing it registers every model class)
    from cellformer.model.base import model_class, saved_model_name

    name = saved_model_name(path, trust=trust)
    cls = model_class(name)
    if cls is None:
        raise _core.InputError(
            f"The model in {str(path)!r} was saved by {name or 'an unknown class'}, not by "
            f"one of cellformer's "
            f"{', '.join(n for n in cellformer.model.__all__ if model_class(n) is not None)}."
        )
    return cls.load(str(path), adata=query, min_gene_coverage=min_gene_coverage, trust=trust)
