"""Model files that run no code when read: tensors in safetensors, everything else in JSON.

A saved model is ``model.safetensors`` (the module's tensors and the numeric arrays among the
model's attributes) and ``model.json`` (the attributes, the genes, and a SHA-256 of every other
file). ``model.json`` also carries a SHA-256 of its own canonical content, so a byte changed in
either file is found at load and named. Reading needs no unpickling: JSON values are decoded by
an explicit list of tags below, and ``safetensors`` holds only raw tensors.

Files from before this format (``model.pt``, a pickle) are read by ``torch.load(weights_only=True)``
with an allow-list of plain numpy and container types; a file that needs anything else (the
pandas tables of a transformer's training history) is read only with ``trust=True``.
Pickles that are not torch's (CellTypist models, Geneformer's gene dictionaries) are read by
:func:`restricted_load`, which admits only the classes such a file holds and refuses every other
import before any object is built.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import json
import math
import pickle
import pickletools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellformer import _core
from cellformer._errors import InputError, UnsafeFileError

__all__ = [
    "JSON_FILE",
    "LEGACY_FILE",
    "TENSOR_FILE",
    "UnsafeFileError",
    "check_finite",
    "decode",
    "encode",
    "legacy_torch_load",
    "read_files",
    "read_manifest",
    "restricted_load",
    "sha256_of",
    "write_files",
]

#: The tensors of a saved model.
TENSOR_FILE = "model.safetensors"
#: Everything else of a saved model, with the checksums.
JSON_FILE = "model.json"
#: The pickle that cellformer wrote before 0.1.0 (scvi-tools' layout).
LEGACY_FILE = "model.pt"
FORMAT = "cellformer-model"
FORMAT_VERSION = 1

_DEFAULT_FACTORIES = {
    "list": list,
    "dict": dict,
    "int": int,
    "float": float,
    "set": set,
    "str": str,
}
_TAGS = (
    "__float__",
    "__tuple__",
    "__set__",
    "__dict__",
    "__defaultdict__",
    "__array__",
    "__objarray__",
    "__dataframe__",
    "__series__",
    "__index__",
    "__categorical__",
)


# -- JSON encoding of attributes ----------------------------------------------------------------
def encode(obj: Any, arrays: dict[str, np.ndarray], where: str = "value") -> Any:
    """Return ``obj`` as JSON-able data; numeric arrays go into ``arrays`` (by reference).

    Supported: None, bool, int, float (NaN and infinities too), str, lists, tuples, sets, dicts
    (any of these keys), ``defaultdict`` of a builtin factory, numpy arrays and scalars, pandas
    DataFrames, Series, Indexes and Categoricals, torch tensors (as arrays), dataclasses (as
    dicts). Anything else is a ``TypeError`` naming
    ``where`` it is.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return str(obj) if isinstance(obj, str) else obj
    if isinstance(obj, np.generic):
        return encode(obj.item(), arrays, where)
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isfinite(obj):
            return float(obj)
        return {"__float__": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
    if isinstance(obj, collections.defaultdict):
        factory = obj.default_factory
        name = next((k for k, v in _DEFAULT_FACTORIES.items() if v is factory), None)
        if factory is not None and name is None:
            raise InputError(f"{where}: a defaultdict of {factory!r} cannot be saved.")
        return {"__defaultdict__": name, "items": _encode_items(obj, arrays, where)}
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode(v, arrays, f"{where}[{k!r}]") for k, v in obj.items()}
        return {"__dict__": _encode_items(obj, arrays, where)}
    if isinstance(obj, list):
        return [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, tuple):
        return {"__tuple__": [encode(v, arrays, where) for v in obj]}
    if isinstance(obj, (set, frozenset)):
        return {"__set__": [encode(v, arrays, where) for v in obj]}
    if isinstance(obj, np.ndarray):
        return _encode_array(obj, arrays, where)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):  # e.g. an EncoderConfig
        return encode(dataclasses.asdict(obj), arrays, where)
    if isinstance(obj, pd.DataFrame):
        return {
            "__dataframe__": {
                "columns": encode(obj.columns, arrays, where),
                "index": encode(obj.index, arrays, where),
                "data": [encode(obj.iloc[:, i], arrays, where) for i in range(obj.shape[1])],
            }
        }
    if isinstance(obj, pd.Series):
        return {
            "__series__": {
                "values": encode(obj.array, arrays, where),
                "index": encode(obj.index, arrays, where),
                "name": encode(obj.name, arrays, where),
            }
        }
    if isinstance(obj, pd.Index):
        return {
            "__index__": {
                "values": encode(obj.array, arrays, where),
                "name": encode(obj.name, arrays, where),
            }
        }
    if isinstance(obj, pd.Categorical):
        return {
            "__categorical__": {
                "categories": encode(obj.categories, arrays, where),
                "codes": encode(np.asarray(obj.codes), arrays, where),
                "ordered": bool(obj.ordered),
            }
        }
    if isinstance(obj, pd.api.extensions.ExtensionArray):
        return _encode_array(np.asarray(obj, dtype=object), arrays, where)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        torch = None
    if torch is not None and isinstance(obj, torch.Tensor):
        return _encode_array(obj.detach().cpu().numpy(), arrays, where)
    raise InputError(f"{where}: a {type(obj).__module__}.{type(obj).__qualname__} cannot be saved.")


def _encode_items(obj: dict, arrays, where) -> list:
    return [
        [encode(k, arrays, where), encode(v, arrays, f"{where}[{k!r}]")] for k, v in obj.items()
    ]


def _encode_array(array: np.ndarray, arrays: dict[str, np.ndarray], where: str) -> dict:
    if array.dtype.kind in "biuf" and array.dtype.itemsize <= 8:
        key = f"attr.{len(arrays)}"
        arrays[key] = np.ascontiguousarray(array.astype(array.dtype.newbyteorder("=")))
        return {"__array__": key}
    if array.dtype.kind in "OUS":
        values = [encode(v, arrays, where) for v in array.ravel(order="C").tolist()]
        return {"__objarray__": values, "dtype": array.dtype.str, "shape": list(array.shape)}
    raise InputError(f"{where}: an array of dtype {array.dtype} cannot be saved.")


def decode(data: Any, arrays: dict[str, np.ndarray]) -> Any:
    """Inverse of :func:`encode`; an unknown tag is an error (nothing else is interpreted)."""
    if isinstance(data, list):
        return [decode(v, arrays) for v in data]
    if not isinstance(data, dict):
        return data
    tags = [k for k in data if k in _TAGS]
    if not tags:
        return {k: decode(v, arrays) for k, v in data.items()}
    tag, value = tags[0], data[tags[0]]
    if tag == "__float__":
        return {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[value]
    if tag == "__tuple__":
        return tuple(decode(v, arrays) for v in value)
    if tag == "__set__":
        return {decode(v, arrays) for v in value}
    if tag == "__dict__":
        return {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in value}
    if tag == "__defaultdict__":
        factory = None if value is None else _DEFAULT_FACTORIES[value]
        items = {_hashable(decode(k, arrays)): decode(v, arrays) for k, v in data["items"]}
        return collections.defaultdict(factory, items)
    if tag == "__array__":
        return arrays[value]
    if tag == "__objarray__":
        values = [decode(v, arrays) for v in value]
        dtype = np.dtype(data["dtype"]) if data["dtype"][1:2] in ("U", "S") else object
        out = np.empty(len(values), dtype=dtype)
        out[:] = values
        return out.reshape(data["shape"])
    if tag == "__dataframe__":
        columns = decode(value["columns"], arrays)
        frame = pd.DataFrame(
            {i: decode(v, arrays) for i, v in enumerate(value["data"])},
            index=decode(value["index"], arrays),
        )
        frame.columns = columns
        return frame
    if tag == "__series__":
        return pd.Series(
            decode(value["values"], arrays),
            index=decode(value["index"], arrays),
            name=decode(value["name"], arrays),
        )
    if tag == "__index__":
        return pd.Index(decode(value["values"], arrays), name=decode(value["name"], arrays))
    codes = decode(value["codes"], arrays)
    categories = decode(value["categories"], arrays)
    return pd.Categorical.from_codes(codes, categories=categories, ordered=value["ordered"])


def _hashable(key):
    return tuple(key) if isinstance(key, list) else key


# -- files and checksums ------------------------------------------------------------------------
def sha256_of(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _canonical(document: dict) -> bytes:
    body = {k: v for k, v in document.items() if k != "sha256"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def write_files(
    directory: str | Path,
    tensors: dict,
    content: dict,
    prefix: str = "",
    extra_files: Iterable[str] = (),
    stem: str = "model",
) -> None:
    """Write ``{prefix}{stem}.safetensors`` and ``{prefix}{stem}.json`` into ``directory``.

    ``tensors``: name → torch tensor (a module's state dict); ``content``: anything
    :func:`encode` takes (numeric arrays in it are stored as tensors). ``extra_files`` (names in
    ``directory``, e.g. a saved AnnData) get their checksum recorded too.
    """
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    arrays: dict[str, np.ndarray] = {}
    encoded = encode(content, arrays, "the model")
    store = {f"module.{k}": v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    store.update({k: torch.from_numpy(v.copy()) for k, v in arrays.items()})
    save_file(store, directory / f"{prefix}{stem}.safetensors", metadata={"format": FORMAT})
    files = [f"{prefix}{stem}.safetensors", *extra_files]
    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "content": encoded,
        "files": {name: sha256_of(directory / name) for name in files},
    }
    document["sha256"] = hashlib.sha256(_canonical(document)).hexdigest()
    text = json.dumps(document, indent=1, allow_nan=False)
    (directory / f"{prefix}{stem}.json").write_text(text, encoding="utf-8")


def _damaged(path: Path, why: str) -> _core.InputError:
    return _core.InputError(
        f"The model file {str(path)!r} is damaged ({why}): it is not the file that was saved. "
        "Download or copy the model again, or save it again."
    )


def read_manifest(directory: str | Path, prefix: str = "", stem: str = "model") -> dict:
    """Read and verify ``{prefix}{stem}.json`` (its own checksum); return the document."""
    path = Path(directory) / f"{prefix}{stem}.json"
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _damaged(path, f"not valid JSON: {err}") from err
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise _core.InputError(
            f'{str(path)!r} is not a cellformer model file (no "format": {FORMAT!r}).'
        )
    if document.get("format_version", 0) > FORMAT_VERSION:
        raise _core.InputError(
            f"{str(path)!r} was written in model format {document['format_version']}, newer "
            f"than this cellformer reads ({FORMAT_VERSION}): upgrade cellformer."
        )
    if document.get("sha256") != hashlib.sha256(_canonical(document)).hexdigest():
        raise _damaged(path, "its SHA-256 does not match the one recorded in it")
    return document


def read_files(directory: str | Path, prefix: str = "", stem: str = "model") -> tuple[Any, dict]:
    """Read and verify what :func:`write_files` wrote: ``(content, module tensors)``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    document = read_manifest(directory, prefix, stem)
    for name, digest in document["files"].items():
        file = directory / name
        if not file.is_file():
            raise _core.InputError(f"The model in {str(directory)!r} lacks its file {name!r}.")
        if sha256_of(file) != digest:
            raise _damaged(file, f"its SHA-256 differs from the one recorded in {stem}.json")
    path = directory / f"{prefix}{stem}.safetensors"
    try:
        store = load_file(path)
    except (SafetensorError, OSError) as err:
        raise _damaged(path, str(err)) from err
    arrays = {k: v.numpy() for k, v in store.items() if k.startswith("attr.")}
    try:
        content = decode(document["content"], arrays)
    except (KeyError, TypeError, ValueError) as err:
        raise _damaged(directory / f"{prefix}{stem}.json", f"{type(err).__name__}: {err}") from err
    tensors = {k[len("module.") :]: v for k, v in store.items() if k.startswith("module.")}
    return content, tensors


def check_finite(tensors: dict, source: str) -> None:
    """Refuse weights with NaN or infinite values (a damaged or diverged model), naming them.

    Thresholds (``unknown_threshold``, ``novelty.threshold``) are exempt: NaN there means
    "not set" and infinity "never".
    """
    import torch

    bad = [
        name
        for name, value in tensors.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not name.rsplit(".", 1)[-1].endswith("threshold")
        and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise _core.InputError(
            f"{source} has NaN or infinite parameters ({', '.join(bad[:5])}"
            f"{' ...' if len(bad) > 5 else ''}): the file is damaged or the model diverged in "
            "training. Train it again or use another copy."
        )


# -- pickles: torch's allow-listed reader, and a restricted unpickler ---------------------------
#: What pickles of numpy arrays and scalars need (numpy 1 and 2 spell the module differently).
NUMPY_GLOBALS = frozenset(
    {
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        *(
            (m, n)
            for m in ("numpy.core.multiarray", "numpy._core.multiarray")
            for n in ("_reconstruct", "scalar")
        ),
    }
)


def legacy_torch_load(path: Path, trust: bool, what: str):
    """``torch.load`` of a pickle written by an older cellformer: allow-listed unless ``trust``."""
    import torch

    if trust:
        return torch.load(path, map_location="cpu", weights_only=False)
    # torch's reader fills only plain dicts: a defaultdict is read as one (the caller restores
    # the one that scvi-tools' registry keeps, registry_["field_registries"])
    allowed = [(_plain_dict, "collections.defaultdict"), dict, list, set, np.ndarray, np.dtype]
    dtypes = getattr(np, "dtypes", None)  # numpy >= 1.25
    if dtypes is not None:
        allowed += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    allowed += [multiarray._reconstruct, multiarray.scalar]
    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _unsafe_globals(path)
        raise UnsafeFileError(
            f"{str(path)!r} is {what} in the older pickle format, and reading it would run "
            f"Python code beyond plain arrays ({', '.join(unsafe) or 'objects outside the allow-list'}). "
            "Load it with trust=True (command line: --trust) only if you trust where it came "
            "from; then save it again to convert it to the safe format (safetensors + JSON)."
        ) from err


def _plain_dict(default_factory=None) -> dict:
    """Stand-in for ``collections.defaultdict`` in torch's allow-listed reader."""
    return {}


def _unsafe_globals(path: Path) -> list[str]:
    import torch

    plain = ("numpy.", "builtins.dict", "builtins.list", "builtins.set", "collections.defaultdict")
    try:
        found = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - only for the message
        return []
    return sorted(name for name in found if not name.startswith(plain))[:6]


def _pickle_globals(data: bytes) -> set[tuple[str, str]]:
    """Every (module, name) a pickle imports, read from its opcodes without running it."""
    found: set[tuple[str, str]] = set()
    strings: list[str] = []
    memo: dict[int, Any] = {}
    last: Any = None
    for op, arg, _ in pickletools.genops(data):
        name = op.name
        if name in {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"}:
            last = arg
            strings.append(arg)
        elif name in {"SHORT_BINSTRING", "BINSTRING", "STRING"}:
            last = arg if isinstance(arg, str) else None
            strings.append(last)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in {"BINPUT", "LONG_BINPUT", "PUT"}:
            memo[arg] = last
        elif name in {"BINGET", "LONG_BINGET", "GET"}:
            last = memo.get(arg)
            strings.append(last)
        elif name == "GLOBAL":
            module, _, attr = str(arg).partition(" ")
            found.add((module, attr))
            last = None
        elif name == "STACK_GLOBAL":
            found.add(
                (
                    str(strings[-2]) if len(strings) > 1 else "?",
                    str(strings[-1]) if strings else "?",
                )
            )
            last = None
        elif name in {"INST", "OBJ"}:
            found.add(("?", "INST/OBJ"))
            last = None
        else:
            last = None
    return found


def restricted_load(data: bytes, allowed: frozenset[tuple[str, str]], source: str, what: str):
    """Unpickle ``data`` admitting only the ``allowed`` (module, name) pairs.

    The pickle's imports are read from its opcodes first: anything outside ``allowed`` is an
    :class:`UnsafeFileError` before a single object is built; the unpickler refuses them again
    while it runs.
    """
    try:
        imports = _pickle_globals(data)
    except (ValueError, IndexError, EOFError) as err:
        raise _core.InputError(f"{source} is not {what} (not a pickle: {err}).") from err
    refused = sorted(f"{m}.{n}" for m, n in imports if (m, n) not in allowed)
    if refused:
        raise UnsafeFileError(
            f"{source} is refused: {what} holds only arrays and a few known classes, but this "
            f"file would import {', '.join(refused[:5])} when read. It may have been made to run "
            "code on your machine; it was not read."
        )

    class _Restricted(pickle.Unpickler):
        def find_class(self, module: str, name: str):
            if (module, name) not in allowed:
                raise UnsafeFileError(f"{source} is refused: it would import {module}.{name}.")
            return super().find_class(module, name)

    return _Restricted(io.BytesIO(data)).load()
