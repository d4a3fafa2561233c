"""Checks around loading a saved model: clear errors for paths and damaged files, versions."""

from __future__ import annotations

import contextlib
import logging
import pickle
import zipfile
from pathlib import Path

import anndata as ad

from cellformer import pp

from ._hub import write_model_card
from ._registry import _CHECKPOINTS, model_class

__all__ = [
    "SavingMixin",
    "check_saved_model",
    "check_version",
    "load_errors",
    "saved_model_name",
]

logger = logging.getLogger("cellformer")


def check_saved_model(dir_path, prefix: str | None, cls_name: str) -> Path:
    """Return the path of the saved model file in ``dir_path``, or raise an error that says why not."""
    path = Path(dir_path)
    name = f"{prefix or ''}model.pt"
    if not path.exists():
        raise pp.InputError(
            f"No saved model at {str(path)!r}: the directory does not exist. Pass the directory "
            f"that {cls_name}.save() wrote (it holds {name})."
        )
    if path.is_file():
        raise pp.InputError(
            f"{str(path)!r} is a file; pass the directory that holds the saved model: "
            f"{cls_name}.load({str(path.parent)!r})."
        )
    if not (path / name).is_file():
        raise pp.InputError(
            f"{str(path)!r} holds no {name}, so it is not a saved cellformer model. Pass the "
            f"directory that {cls_name}.save() wrote."
        )
    return path / name


@contextlib.contextmanager
def load_errors(dir_path):
    """Turn torch's and pickle's errors on a damaged model file into one clear error.

    scvi-tools' "File … already downloaded" line (it treats the local file as a download) is
    kept out of the user's log.
    """
    quiet = logging.getLogger("scvi.data._download")
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        yield
    except (
        RuntimeError,
        pickle.UnpicklingError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        KeyError,
        AttributeError,
        TypeError,
    ) as err:
        raise pp.InputError(
            f"The saved model in {str(dir_path)!r} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else 'no detail'}). The file is damaged, "
            "truncated or was not written by cellformer: save the model again."
        ) from err
    except ValueError as err:  # scvi-tools: a model of another class
        if "different class" in str(err) or "model_name" in str(err):
            raise pp.InputError(
                f"The model in {str(dir_path)!r} was saved by another model class ({err}). "
                "Load it with the class that saved it (LinearClassifier or CellTransformer)."
            ) from err
        raise
    finally:
        quiet.setLevel(level)


def _major_minor(version: str) -> tuple[int, ...]:
    parts = []
    for part in str(version).split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def check_version(model, dir_path) -> None:
    """Warn when a model was saved by a cellformer release with another major.minor version."""
    from cellformer._version import __version__

    saved = getattr(model, "cellformer_version_", None)
    if saved is None:
        logger.warning(
            "The model in %r records no cellformer version (saved before 0.1.0?); if predictions "
            "look wrong, train and save it again with cellformer %s.",
            str(dir_path),
            __version__,
        )
        return
    if _major_minor(saved) != _major_minor(__version__):
        newer = _major_minor(saved) > _major_minor(__version__)
        logger.warning(
            "The model in %r was saved by cellformer %s, this is %s (%s): it may not load "
            "or predict the same; %s.",
            str(dir_path),
            saved,
            __version__,
            "a newer release" if newer else "an older release",
            "upgrade cellformer" if newer else "train and save it again",
        )


def saved_model_name(dir_path, prefix: str | None = None) -> str | None:
    """Name of the model class that saved the model in ``dir_path``.

    The file is memory-mapped: only its small pickled part is read, not the weights.
    """
    import torch

    file = check_saved_model(dir_path, prefix, "the model class")
    with load_errors(dir_path):
        saved = torch.load(file, map_location="cpu", weights_only=False, mmap=True)
    return saved.get("attr_dict", {}).get("registry_", {}).get("model_name")


class SavingMixin:
    """``save`` and ``load`` of :class:`~cellformer.model.CellformerModel` (with a model card)."""

    #: :meth:`load` also hands over models of the registered checkpoint classes (which this
    #: class's ``from_pretrained`` builds).
    _loads_checkpoints: bool = False

    def save(
        self, dir_path: str, overwrite: bool = False, license: str | None = None, **kwargs
    ) -> None:
        """Save the model to ``dir_path`` (a directory), with the cellformer version.

        Beside ``model.pt`` it writes a model card (``README.md``: the genes and their kind, the
        cell types with their training cells, validation metrics, versions, license) and
        scvi-tools' hub metadata (``_scvi_required_metadata.json``), the layout that
        :class:`scvi.hub.HubModel` reads: ``HubModel(dir_path).push_to_huggingface_hub(...)``
        publishes it, and ``cf.tl.annotate(query, model="hf:ORG/NAME")`` uses it.

        ``overwrite=True`` replaces an existing model there; ``license`` (e.g. ``"cc-by-4.0"``)
        goes into the card. Other arguments go to scvi-tools' ``save`` (the training data are
        not saved unless ``save_anndata=True``).
        """
        from cellformer._version import __version__

        path = Path(dir_path)
        if path.exists() and not path.is_dir():
            raise pp.OverwriteError(
                f"{str(dir_path)!r} is a file; save() writes a directory of files there. Pass "
                "another path."
            )
        if path.exists() and not overwrite:
            raise pp.OverwriteError(
                f"{str(dir_path)!r} already exists: pass overwrite=True to replace the model "
                "there, or another path."
            )
        self.cellformer_version_ = __version__
        super().save(dir_path, overwrite=overwrite, **kwargs)
        write_model_card(self, dir_path, license=license)

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: ad.AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        min_gene_coverage: float = 0.5,
    ):
        """Load a saved model; ``adata`` (optional) becomes the default data for prediction.

        Unlike scvi-tools' ``load``, ``adata`` may have other genes, another gene order, or no
        labels: genes are aligned by name at prediction time and the coverage is reported here
        (an error below ``min_gene_coverage``).
        """
        check_saved_model(dir_path, prefix, cls.__name__)
        saved_by = saved_model_name(dir_path, prefix)  # memory-mapped: the weights are not read
        if saved_by != cls.__name__:
            saver = model_class(saved_by)
            checkpoint = cls._loads_checkpoints and any(saver is c for _, c in _CHECKPOINTS)
            if saver is not None and (issubclass(saver, cls) or checkpoint):
                return saver.load(
                    dir_path,
                    adata=adata,
                    accelerator=accelerator,
                    device=device,
                    prefix=prefix,
                    min_gene_coverage=min_gene_coverage,
                )
            raise pp.InputError(
                f"The model in {str(dir_path)!r} was saved by another model class "
                f"({saved_by or 'unknown'}), not {cls.__name__}: load it with "
                f"cf.model.{saved_by or cls.__name__}.load({str(dir_path)!r})."
            )
        with load_errors(dir_path):
            model = super().load(
                dir_path, adata=False, accelerator=accelerator, device=device, prefix=prefix
            )
        check_version(model, dir_path)
        if adata is not None:
            # validate and report gene coverage now, not at predict
            model._resolve(adata, None, min_gene_coverage=min_gene_coverage)
            model._query_adata = adata
        return model
