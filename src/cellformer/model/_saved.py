"""Checks around loading a saved model: clear errors for paths and damaged files, versions."""

from __future__ import annotations

import contextlib
import logging
import pickle
import zipfile
from pathlib import Path

from cellformer import pp

__all__ = ["check_saved_model", "check_version", "load_errors", "saved_model_name"]

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
    from cellformer import __version__

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
