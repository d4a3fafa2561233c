"""Checks of the command line's input and output files (clear errors before any work)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "atomic_output",
    "input_file",
    "output_file",
    "raw_as_layer",
    "read_h5ad",
    "write_annotated",
    "write_results_only",
]


def input_file(path: str, flag: str, hdf5: bool = True) -> Path:
    """Check that ``path`` is a readable .h5ad (HDF5) file, before anything is loaded.

    ``hdf5=False``: any existing file (e.g. a CellTypist model).
    """
    from ._core import InputError

    p = Path(path)
    if not p.exists():
        raise InputError(f"{flag} {path}: no such file.")
    if p.is_dir():
        raise InputError(f"{flag} {path} is a directory; pass {'an .h5ad' if hdf5 else 'a'} file.")
    if not hdf5:
        return p
    import h5py

    if not h5py.is_hdf5(p):
        raise InputError(
            f"{flag} {path} is not an .h5ad (HDF5) file. Convert it first, e.g. in Python: "
            "sc.read_csv(path).write_h5ad('data.h5ad'), or sc.read_10x_mtx(dir).write_h5ad(...)."
        )
    return p


def read_h5ad(path: Path, flag: str, backed: bool = False):
    """Read an .h5ad file (``backed``: its matrix stays on disk), with a clear error."""
    import anndata as ad

    from ._core import InputError, check_has_genes

    try:
        adata = ad.read_h5ad(path, backed="r" if backed else None)
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise InputError(f"{flag} {path} cannot be read as AnnData ({err}).") from err
    check_has_genes(adata, f"{flag} {path}")
    return adata


def output_file(
    path: str,
    inputs: list[Path],
    flag: str = "--out",
    suffix: str = ".h5ad",
    overwrite: bool = False,
) -> Path:
    """Refuse an output that cannot or should not be written.

    A directory, one of ``inputs``, an existing file (without ``overwrite``), another suffix,
    a path under a file or in a directory that is not writable.
    """
    import os

    from ._core import InputError, OverwriteError

    p = Path(path)
    if p.is_dir():
        raise InputError(f"{flag} {path} is a directory; name the {suffix} file to write.")
    existing = next((a for a in p.absolute().parents if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputError(f"{flag} {path}: {existing} is a file, not a directory.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: the directory {existing} is not writable.")
    if any(p.resolve() == q.resolve() for q in inputs):
        taken = "an input" if flag == "--out" else "an input or the output"
        raise InputError(f"{flag} {path} is also {taken}; name another file.")
    if p.suffix != suffix:
        raise InputError(f"{flag} {path}: the output must be an {suffix} file.")
    if p.exists() and not overwrite:
        raise OverwriteError(f"{flag} {path} already exists: pass --overwrite to replace it.")
    if p.exists() and not os.access(p, os.W_OK):
        raise InputError(f"{flag} {path} exists and is not writable.")
    return p


def model_dir(path: str, overwrite: bool) -> Path:
    """Refuse a ``--save-model`` directory that cannot or should not be written, before any work.

    A file, an existing directory without ``--overwrite``, one with ``--overwrite`` that holds
    something other than a saved cellformer model, a place that is not writable.
    """
    import os

    from ._core import InputError, OverwriteError
    from .model.base import holds_saved_model

    p = Path(path)
    if p.is_file():
        raise InputError(f"--save-model {path} is a file; name a directory.")
    if p.exists() and not overwrite:
        raise OverwriteError(f"--save-model {path} already exists: pass --overwrite to replace it.")
    if p.exists() and any(p.iterdir()) and not holds_saved_model(p):
        raise OverwriteError(
            f"--save-model {path} holds other files, not a saved cellformer model: --overwrite "
            "replaces only a saved model. Name a new or empty directory."
        )
    existing = next((a for a in [p.absolute(), *p.absolute().parents] if a.exists()), None)
    if existing is not None and not existing.is_dir():
        raise InputError(f"--save-model {path}: {existing} is a file, not a directory.")
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(f"--save-model {path}: {existing} is not writable.")
    return p


def raw_as_layer(adata, layer: str | None, flag: str):
    """``--layer raw``: the AnnData of ``adata.raw`` (its genes and values), layer ``None``.

    scanpy keeps counts or log-normalised values in ``adata.raw`` before scaling ``X``; a file
    with a layer actually named ``"raw"`` uses that layer instead.
    """
    from ._core import InputError

    if layer != "raw" or "raw" in adata.layers:
        return adata, layer
    if adata.raw is None:
        raise InputError(
            f"{flag} raw: the file has no adata.raw and no layer 'raw' "
            f"(layers: {list(adata.layers) or 'none'})."
        )
    return adata.raw.to_adata(), None


def _write_elem():
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    return write_elem


@contextmanager
def atomic_output(path: Path):
    """Yield a temporary path beside ``path``; move it onto ``path`` only when all went well.

    An error, a full disk or an interrupt leaves no half-written ``path`` (and no temporary
    file).
    """
    import os

    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_annotated(source: Path, out: Path, adata, obsm_keys, uns_keys) -> None:
    """Write ``source`` with ``adata``'s ``obs`` and the given ``obsm``/``uns`` entries to ``out``.

    The input file is copied as it is (its matrix is never loaded) and the new elements are
    written into the copy with anndata's element writers; ``out`` appears only when complete.
    """
    import shutil

    import h5py

    write_elem = _write_elem()
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        shutil.copyfile(source, tmp)
        with h5py.File(tmp, "r+") as f:
            for group, key, value in [
                ("", "obs", adata.obs),
                *[("obsm/", key, adata.obsm[key]) for key in obsm_keys],
                *[("uns/", key, adata.uns[key]) for key in uns_keys],
            ]:
                name = group + key
                if name in f:
                    del f[name]
                if group and group.rstrip("/") not in f:
                    f.create_group(group.rstrip("/"))
                write_elem(f, name, value)


def write_results_only(out: Path, adata, columns, obsm_keys, uns_keys) -> None:
    """Write only the results (``obs`` columns, ``obsm`` and ``uns`` entries) as a small .h5ad."""
    import anndata as ad

    results = ad.AnnData(obs=adata.obs[list(columns)].copy())
    for key in obsm_keys:
        results.obsm[key] = adata.obsm[key]
    for key in uns_keys:
        results.uns[key] = adata.uns[key]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(out) as tmp:
        results.write_h5ad(tmp)
