"""A pooch registry of the files cellformer can download, with clear errors."""

from __future__ import annotations

import logging
import os
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import pooch

from cellformer._errors import CellformerError, MissingKeyError

__all__ = ["REGISTRY", "DownloadError", "RemoteFile", "data_dir", "fetch"]

ENV_DATA_DIR = "CELLFORMER_DATA_DIR"
#: Suffix of the file that records a download's hash, for files without a published one.
RECORDED_SUFFIX = ".sha256"

logger = logging.getLogger("cellformer")


class DownloadError(CellformerError, RuntimeError):
    """A data file could not be downloaded or failed its checksum."""


class DamagedFileError(DownloadError):
    """A cached data file cannot be read (delete it to download it again)."""


@dataclass(frozen=True)
class RemoteFile:
    """One downloadable file.

    Parameters
    ----------
    url
        Where the file is downloaded from.
    known_hash
        ``"sha256:<hex>"`` (or another algorithm pooch knows) when the publisher's file is known;
        ``None`` skips the check (pooch then logs the hash it computed).
    description
        One line for error messages and docs.
    """

    url: str
    known_hash: str | None
    description: str


#: Files that :func:`~cellformer.datasets.fetch` knows. Tests point these at a local server; users never need to.
#: The upstream providers publish no checksums for these files, so ``known_hash`` is ``None``
#: (no check): pooch logs the SHA256 it sees on first download, which is the value to record here
#: once verified.
REGISTRY: dict[str, RemoteFile] = {
    "pbmc3k_filtered_gene_bc_matrices.tar.gz": RemoteFile(
        url="https://cf.10xgenomics.com/samples/cell-exp/1.1.0/pbmc3k/pbmc3k_filtered_gene_bc_matrices.tar.gz",
        known_hash=None,
        description="10x Genomics PBMC3k filtered gene-barcode matrices (raw UMI counts, 2,700 cells)",
    ),
    "pbmc3k_processed.h5ad": RemoteFile(
        url="https://exampledata.scverse.org/scanpy/pbmc3k.h5ad",
        known_hash=None,
        description="scanpy's processed PBMC3k (2,638 cells with the tutorial's cell-type annotation)",
    ),
    "sctab_features.parquet": RemoteFile(
        url="https://raw.githubusercontent.com/theislab/scTab/"
        "68e4a636409586263c041273eee87eaf4971884a/notebooks/store_creation/features.parquet",
        known_hash=None,
        description="scTab's 19,331 protein-coding genes (column gene_names)",
    ),
    # CellTypist's published models (its models.json); the hash of Immune_All_Low.pkl (v2,
    # 2,824,990 bytes) is the one a public manifest pins
    "Immune_All_Low.pkl": RemoteFile(
        url="https://celltypist.cog.sanger.ac.uk/models/Pan_Immune_CellTypist/v2/Immune_All_Low.pkl",
        known_hash="sha256:290874d35dac039d4c9218c343fde4aac1077709b72a331ce7266f6828c36502",
        description="CellTypist's Immune_All_Low model (v2: fine-grained immune cell types)",
    ),
    "Immune_All_High.pkl": RemoteFile(
        url="https://celltypist.cog.sanger.ac.uk/models/Pan_Immune_CellTypist/v2/Immune_All_High.pkl",
        known_hash=None,
        description="CellTypist's Immune_All_High model (v2: coarse immune cell types)",
    ),
    "cl-simple.obo": RemoteFile(
        # the release before the Census of 2023-05-15 that scTab was built from (a dated URL:
        # the undated one moves with every release)
        url="http://purl.obolibrary.org/obo/cl/releases/2023-04-20/cl-simple.obo",
        known_hash=None,
        description="Cell Ontology, is_a hierarchy without imports (for scTab's depth filter)",
    ),
}


def data_dir() -> Path:
    """Directory where downloaded data are cached.

    ``$CELLFORMER_DATA_DIR`` if set, else the user cache directory (e.g. ``~/.cache/cellformer``).
    """
    env = os.environ.get(ENV_DATA_DIR)
    path = Path(env) if env else Path(platformdirs.user_cache_dir("cellformer"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _manual_hint(name: str, entry: RemoteFile, target: Path) -> str:
    return (
        f"To use it offline, download it by hand from\n  {entry.url}\nand place it at\n  {target}\n"
        f"(or set ${ENV_DATA_DIR} to a directory that holds '{name}')."
    )


def fetch(
    name: str, processor: pooch.processors.ExtractorProcessor | None = None
) -> Path | list[str]:
    """Download one registered file into :func:`~cellformer.datasets.data_dir`, or return the cached copy.

    Downloads go to a temporary file that is moved into place only when complete, so an
    interrupted download leaves nothing behind. A cached file is checked against its known
    hash (pooch downloads it again when it differs) or, for files whose publisher gives none,
    against the hash recorded beside it at the first download (``NAME.sha256``).

    Parameters
    ----------
    name
        A key of ``REGISTRY``.
    processor
        Optional pooch processor (e.g. :class:`pooch.Untar`) applied after download.

    Returns
    -------
    pathlib.Path or list
        The cached file, or what the processor returns (a list of extracted paths).

    Raises
    ------
    DownloadError
        The host cannot be reached (the message says where to put the file by hand) or the file
        does not match its recorded hash (the message names the file and both hashes).
    """
    if name not in REGISTRY:
        raise MissingKeyError(f"Unknown data file {name!r}. Known files: {sorted(REGISTRY)}.")
    entry = REGISTRY[name]
    folder = data_dir()
    target = folder / name
    recorded = folder / f"{name}{RECORDED_SUFFIX}"
    if entry.known_hash is None and target.is_file() and recorded.is_file():
        # no published hash: the one recorded at the first download tells a damaged copy
        if f"sha256:{pooch.file_hash(str(target))}" != recorded.read_text().strip():
            logger.warning(
                "The cached '%s' at %s differs from the file first downloaded (damaged or "
                "replaced): downloading it again.",
                name,
                target,
            )
            target.unlink()
    try:
        out = pooch.retrieve(
            url=entry.url,
            known_hash=entry.known_hash,
            fname=name,
            path=folder,
            processor=processor,
            progressbar=False,
        )
    except ValueError as err:
        # pooch raises ValueError on a checksum mismatch and does not keep the bad file
        if "hash" not in str(err).lower():
            raise
        raise DownloadError(
            f"The file '{name}' ({entry.description}) downloaded from {entry.url} is corrupted or "
            f"has changed upstream: its checksum does not match the expected {entry.known_hash}.\n"
            f"pooch said: {err}\n"
            "Delete any partial copy and try again; if it persists, report it. "
            + _manual_hint(name, entry, target)
        ) from err
    except (tarfile.ReadError, zipfile.BadZipFile, EOFError) as err:  # a processor's input
        raise damaged(name, err) from err
    except OSError as err:  # requests' ConnectionError, timeouts and HTTP errors are OSErrors
        raise DownloadError(
            f"Could not download '{name}' ({entry.description}) from {entry.url}: {err}.\n"
            "This machine may be offline or the host unreachable. "
            + _manual_hint(name, entry, target)
        ) from err
    if entry.known_hash is None and not recorded.is_file() and target.is_file():
        recorded.write_text(f"sha256:{pooch.file_hash(str(target))}")
    return out if processor is not None else Path(out)


def damaged(name: str, err: BaseException) -> DamagedFileError:
    """Build the error for an unreadable cached file: which file, and how to get it again."""
    entry = REGISTRY[name]
    target = data_dir() / name
    return DamagedFileError(
        f"The cached file '{name}' ({entry.description}) at {target} cannot be read "
        f"({type(err).__name__}: {err}). It is damaged or not the expected file: delete it "
        f"(and any '{name}' folder or extracted copy beside it) and call again to download it "
        "anew. " + _manual_hint(name, entry, target)
    )
