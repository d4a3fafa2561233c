"""Checks around loading a saved model: clear errors for paths and damaged files, versions."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import pickle
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np

from cellformer import _core
from cellformer._errors import ParameterError

from ._files import (
    JSON_FILE,
    LEGACY_FILE,
    TENSOR_FILE,
    check_finite,
    legacy_torch_load,
    read_files,
    read_manifest,
    write_files,
)
from ._hub import METADATA_FILE, write_model_card
from ._registry import _CHECKPOINTS, model_class

__all__ = [
    "SavedModel",
    "load",
    "save",
    "check_saved_model",
    "check_version",
    "holds_saved_model",
    "load_errors",
    "read_saved",
    "saved_model_name",
]

logger = logging.getLogger("cellformer")


def check_saved_model(dir_path, prefix: str | None, cls_name: str) -> Path:
    """Return the path of the saved model's main file in ``dir_path``, or say why there is none.

    The main file is ``model.json`` (``model.pt`` of releases before 0.1.0).
    """
    path = Path(dir_path)
    names = [f"{prefix or ''}{JSON_FILE}", f"{prefix or ''}{LEGACY_FILE}"]
    if not path.exists():
        raise _core.InputError(
            f"No saved model at {str(path)!r}: the directory does not exist. Pass the directory "
            f"that {cls_name}.save() wrote (it holds {names[0]})."
        )
    if path.is_file():
        raise _core.InputError(
            f"{str(path)!r} is a file; pass the directory that holds the saved model: "
            f"{cls_name}.load({str(path.parent)!r})."
        )
    for name in names:
        if (path / name).is_file():
            return path / name
    raise _core.InputError(
        f"{str(path)!r} holds no {names[0]} (nor an older {names[1]}), so it is not a saved "
        f"cellformer model. Pass the directory that {cls_name}.save() wrote."
    )


@dataclasses.dataclass
class SavedModel:
    """What a saved model's files hold: its attributes, genes and module tensors."""

    attr_dict: dict
    var_names: np.ndarray
    tensors: dict

    @property
    def model_name(self) -> str | None:
        return self.attr_dict.get("registry_", {}).get("model_name")


def read_saved(dir_path, prefix: str | None = None, trust: bool = False) -> SavedModel:
    """Read (and verify) a saved model's files; running no code unless ``trust`` for old ones.

    The safe format (``model.json`` + ``model.safetensors``) is read whatever ``trust``; a
    ``model.pt`` of an older release through ``torch.load(weights_only=True)`` with an
    allow-list, or, with ``trust=True``, as the pickle it is.
    """
    file = check_saved_model(dir_path, prefix, "the model class")
    if file.name.endswith(JSON_FILE):
        content, tensors = read_files(dir_path, prefix or "")
        return SavedModel(content["attr_dict"], content["var_names"], tensors)
    with load_errors(dir_path):
        saved = legacy_torch_load(file, trust, "a saved cellformer model")
    if not isinstance(saved, dict) or not isinstance(saved.get("attr_dict"), dict):
        raise _core.InputError(f"{str(file)!r} is not a saved cellformer model.")
    tensors = dict(saved.get("model_state_dict") or {})
    tensors.pop("pyro_param_store", None)
    registry = saved["attr_dict"].get("registry_")
    if isinstance(registry, dict) and isinstance(registry.get("field_registries"), dict):
        registry["field_registries"] = collections.defaultdict(dict, registry["field_registries"])
    return SavedModel(saved["attr_dict"], saved.get("var_names"), tensors)


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
        raise _core.InputError(
            f"The saved model in {str(dir_path)!r} cannot be read ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:160] if str(err) else 'no detail'}). The file is damaged, "
            "truncated or was not written by cellformer: save the model again."
        ) from err
    except ValueError as err:  # scvi-tools: a model of another class
        if "different class" in str(err) or "model_name" in str(err):
            raise _core.InputError(
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


def saved_model_name(dir_path, prefix: str | None = None, trust: bool = False) -> str | None:
    """Name of the model class that saved the model in ``dir_path``.

    Of the safe format only ``model.json`` is read (and verified), not the weights.
    """
    file = check_saved_model(dir_path, prefix, "the model class")
    if file.name.endswith(JSON_FILE):
        content = read_manifest(dir_path, prefix or "")["content"]
        registry = (
            content.get("attr_dict", {}).get("registry_", {}) if isinstance(content, dict) else {}
        )
        return registry.get("model_name") if isinstance(registry, dict) else None
    return read_saved(dir_path, prefix, trust).model_name


def _build(cls, saved: SavedModel, accelerator: str, device, source: str):
    """Build the model of class ``cls`` from what :func:`read_saved` returned.

    scvi-tools' ``load`` without its ``torch.load``: constructed from its init parameters and
    registry, attributes restored, weights checked finite and loaded.
    """
    from scvi.model._utils import parse_device_args

    _, _, torch_device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    attrs = dict(saved.attr_dict)
    registry = attrs.pop("registry_")
    params = attrs.pop("init_params_", None)
    if not isinstance(params, dict):
        raise _core.InputError(
            f"{source} records no init parameters: it was not saved by cellformer."
        )
    if "non_kwargs" in params:
        kwargs = dict(params["non_kwargs"])
        for group in params.get("kwargs", {}).values():
            kwargs.update(group)
    else:
        kwargs = dict(params)
    kwargs.pop("registry", None)
    model = cls(None, registry=registry, **kwargs)
    for name, value in attrs.items():
        setattr(model, name, value)
    check_finite(saved.tensors, source)
    model.module.on_load(model)
    model.module.load_state_dict(saved.tensors)
    model.to_device(torch_device)
    model.module.eval()
    return model


# ``save`` and ``load`` of :class:`~cellformer.model.CellformerModel` (bound in its body)


def save(
    self,
    dir_path: str,
    overwrite: bool = False,
    license: str | None = None,
    save_anndata: bool = False,
    prefix: str | None = None,
    anndata_write_kwargs: dict | None = None,
) -> None:
    """Save the model to ``dir_path`` (a directory), in files that run no code when read.

    ``model.safetensors`` holds the weights and ``model.json`` everything else (the genes,
    the classes, the fitted statistics, the cellformer version, and a SHA-256 of each file,
    checked by :meth:`load`). Beside them: a model card (``README.md``: the genes and their
    kind, the cell types with their training cells, validation metrics, versions, license)
    and scvi-tools' hub metadata (``_scvi_required_metadata.json``), the layout that
    :class:`scvi.hub.HubModel` reads: ``HubModel(dir_path).push_to_huggingface_hub(...)``
    publishes it, and ``cf.tl.annotate(query, model="hf:ORG/NAME")`` uses it.

    ``overwrite=True`` replaces a saved model there (a directory holding other files is
    refused); ``license`` (e.g. ``"cc-by-4.0"``) goes into the card; ``save_anndata=True``
    also writes the training data (``adata.h5ad``, with ``anndata_write_kwargs``);
    ``prefix`` goes before each model file's name.
    """
    from cellformer._version import __version__

    path = Path(dir_path)
    pre = prefix or ""
    if path.exists() and not path.is_dir():
        raise _core.OverwriteError(
            f"{str(dir_path)!r} is a file; save() writes a directory of files there. Pass "
            "another path."
        )
    if path.exists() and not overwrite:
        raise _core.OverwriteError(
            f"{str(dir_path)!r} already exists: pass overwrite=True to replace the model "
            "there, or another path."
        )
    if path.exists() and any(path.iterdir()) and not holds_saved_model(path, prefix):
        raise _core.OverwriteError(
            f"{str(dir_path)!r} holds other files, not a saved cellformer model: "
            "overwrite=True replaces only a saved model. Pass a new or empty directory."
        )
    path.mkdir(parents=True, exist_ok=True)
    self.cellformer_version_ = __version__
    extra = []
    if save_anndata:
        name = f"{pre}{'mdata.h5mu' if type(self.adata).__name__ == 'MuData' else 'adata.h5ad'}"
        self.adata.write(path / name, **(anndata_write_kwargs or {}))
        extra.append(name)
    attributes = {name: value for name, value in self._get_user_attributes() if name.endswith("_")}
    write_files(
        path,
        self.module.state_dict(),
        {"var_names": self.get_var_names(), "attr_dict": attributes},
        prefix=pre,
        extra_files=extra,
    )
    (path / f"{pre}{LEGACY_FILE}").unlink(missing_ok=True)  # an older save, replaced
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
    trust: bool = False,
):
    """Load a saved model; ``adata`` (optional) becomes the default data for prediction.

    Unlike scvi-tools' ``load``, ``adata`` may have other genes, another gene order, or no
    labels: genes are aligned by name at prediction time and the coverage is reported here
    (an error below ``min_gene_coverage``).

    Loading runs no code from the files: the weights are read from ``model.safetensors``,
    the rest from ``model.json``, and both are checked against the SHA-256 recorded at
    :meth:`save` (a damaged file is an error that names it), as are NaN or infinite
    weights. A ``model.pt`` written by cellformer before 0.1.0 is read with
    ``torch.load(weights_only=True)`` and an allow-list of plain arrays; one that needs more
    (a transformer's training history, pandas tables) loads only with ``trust=True``, which
    runs its pickle: use it only for files you trust, and save the model again to convert it.
    """
    if not isinstance(trust, bool):
        raise ParameterError(f"trust must be True or False, got {trust!r}.")
    check_saved_model(dir_path, prefix, cls.__name__)
    saved_by = saved_model_name(dir_path, prefix, trust)  # model.json only: no weights read
    if saved_by != cls.__name__:
        saver = model_class(saved_by)
        checkpoint = cls._loads_checkpoints and any(saver is k.cls for k in _CHECKPOINTS)
        if saver is not None and (issubclass(saver, cls) or checkpoint):
            return saver.load(
                dir_path,
                adata=adata,
                accelerator=accelerator,
                device=device,
                prefix=prefix,
                min_gene_coverage=min_gene_coverage,
                trust=trust,
            )
        raise _core.InputError(
            f"The model in {str(dir_path)!r} was saved by another model class "
            f"({saved_by or 'unknown'}), not {cls.__name__}: load it with "
            f"cf.model.{saved_by or cls.__name__}.load({str(dir_path)!r})."
        )
    saved = read_saved(dir_path, prefix, trust)
    with load_errors(dir_path):
        model = _build(cls, saved, accelerator, device, f"The model in {str(dir_path)!r}")
    check_version(model, dir_path)
    if adata is not None:
        # validate and report gene coverage now, not at predict
        model._resolve(adata, None, min_gene_coverage=min_gene_coverage)
        model._query_adata = adata
    return model


def holds_saved_model(path: Path, prefix: str | None = None) -> bool:
    """Whether the directory ``path`` holds a saved cellformer model (either format)."""
    pre = prefix or ""
    return any((Path(path) / f"{pre}{n}").is_file() for n in (JSON_FILE, LEGACY_FILE)) or (
        (Path(path) / METADATA_FILE).is_file() and (Path(path) / f"{pre}{TENSOR_FILE}").is_file()
    )
