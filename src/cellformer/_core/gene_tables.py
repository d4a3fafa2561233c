"""Gene identifiers across naming schemes: Ensembl IDs, symbols, human ↔ mouse orthologs.

The tables are the pinned ones that CellTypist's package ships (``celltypist/data/samples``):
GENCODE v44 human Ensembl gene ID ↔ gene name, and Ensembl 105 human ↔ mouse orthologs
(symbols). They are read from the installed package's files without importing it
(``pip install "cellformer[celltypist]"``). Nothing here is a hand-written gene list.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from cellformer._errors import ParameterError

from .checks import InputError

__all__ = [
    "GENE_TABLES",
    "GeneMapping",
    "GeneTableError",
    "gene_namespace",
    "map_gene_names",
    "map_genes",
]

logger = logging.getLogger("cellformer")

#: The files read, in ``celltypist/data/samples`` of the installed ``celltypist`` package.
GENE_TABLES = {
    "gencode": ("GENCODEv44_Gene_id2name.csv", "GENCODE v44"),
    "orthologs": ("Ensembl105_Human2Mouse_Genes.csv", "Ensembl 105 human-mouse orthologs"),
}

_VERSION = re.compile(r"\.\d+$")
_ENSEMBL = re.compile(r"^ENS([A-Z]*)G\d{6,}(\.\d+)?$")

#: Naming schemes: (species, kind).
NAMESPACES = {
    ("human", "ensembl"): "human Ensembl IDs",
    ("mouse", "ensembl"): "mouse Ensembl IDs",
    ("human", "symbol"): "human symbols",
    ("mouse", "symbol"): "mouse symbols",
}


class GeneTableError(InputError):
    """The gene tables needed to map names are not installed, or a user table is ambiguous."""


def strip_version(names) -> pd.Index:
    """Ensembl IDs without their version suffix (``ENSG00000163736.1`` → ``ENSG00000163736``)."""
    names = pd.Index(names).astype(str)
    is_id = names.str.match(_ENSEMBL.pattern)
    return pd.Index(np.where(is_id, names.str.replace(_VERSION, "", regex=True), names))


def _tables_dir() -> Path:
    spec = importlib.util.find_spec("celltypist")
    if spec is None or not spec.submodule_search_locations:
        raise GeneTableError(
            "Mapping gene names between Ensembl IDs, symbols and species needs the gene tables "
            "that CellTypist's package ships (GENCODE v44, Ensembl 105 orthologs): install them "
            "with pip install 'cellformer[celltypist]' (or pip install celltypist), or rename "
            "the genes yourself (adata.var_names = adata.var['gene_symbols'])."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "samples"


def _read_table(key: str) -> pd.DataFrame:
    name, what = GENE_TABLES[key]
    path = _tables_dir() / name
    if not path.is_file():
        raise GeneTableError(
            f"The installed celltypist package has no {name} ({what}) in {path.parent}: "
            "upgrade it, pip install -U 'celltypist>=1.6.3'."
        )
    return pd.read_csv(path, header=None, names=["a", "b"], dtype=str, keep_default_na=False)


def clear_cache() -> None:
    """Forget the tables read (e.g. after installing or removing celltypist)."""
    for cached in (gencode, orthologs, _symbol_sets):
        cached.cache_clear()


@lru_cache(maxsize=1)
def gencode() -> pd.DataFrame:
    """GENCODE v44 human genes: columns ``ensembl`` (without version) and ``symbol``."""
    table = _read_table("gencode").rename(columns={"a": "ensembl", "b": "symbol"})
    table["ensembl"] = strip_version(table["ensembl"])
    return table[(table["ensembl"] != "") & (table["symbol"] != "")].drop_duplicates()


@lru_cache(maxsize=1)
def orthologs() -> pd.DataFrame:
    """Ensembl 105 human ↔ mouse orthologs: columns ``human`` and ``mouse`` (symbols)."""
    table = _read_table("orthologs").rename(columns={"a": "human", "b": "mouse"})
    return table[(table["human"] != "") & (table["mouse"] != "")].drop_duplicates()


@lru_cache(maxsize=1)
def _symbol_sets() -> tuple[frozenset, frozenset]:
    human = set(gencode()["symbol"]) | set(orthologs()["human"])
    return frozenset(human), frozenset(orthologs()["mouse"])


def gene_namespace(names) -> tuple[str | None, str | None]:
    """Tell the naming scheme of gene names: ``(species, kind)``.

    Kind ``"ensembl"`` or ``"symbol"``, species ``"human"``/``"mouse"`` (``None`` where it
    cannot be told).

    Ensembl IDs tell their species by prefix (``ENSG``, ``ENSMUSG``); symbols by which table
    holds more of them (case-sensitive: ``CD3E`` is human, ``Cd3e`` mouse). Symbols are only
    looked up in the tables when the tables are installed.
    """
    names = pd.Index(names).astype(str)
    if len(names) == 0:
        return None, None
    sample = names[: min(len(names), 2000)]
    match = sample.str.extract(_ENSEMBL.pattern)[0]
    if match.notna().mean() > 0.5:
        prefix = match.dropna().value_counts().idxmax()
        return {"": "human", "MUS": "mouse"}.get(prefix), "ensembl"
    try:
        human, mouse = _symbol_sets()
    except GeneTableError:
        return None, "symbol"
    h, m = sample.isin(human).mean(), sample.isin(mouse).mean()
    if max(h, m) < 0.05:
        return None, "symbol"
    return ("human" if h >= m else "mouse"), "symbol"


def _edges(source: tuple, target: tuple) -> tuple[pd.DataFrame, str]:
    """Pairs ``(src, dst)`` from one naming scheme to another, and the tables used."""
    if source == target:
        raise ParameterError("source and target naming are the same")
    g = gencode()
    frames = {
        (("human", "ensembl"), ("human", "symbol")): g.rename(
            columns={"ensembl": "src", "symbol": "dst"}
        ),
        (("human", "symbol"), ("mouse", "symbol")): orthologs().rename(
            columns={"human": "src", "mouse": "dst"}
        ),
    }
    used = {
        (("human", "ensembl"), ("human", "symbol")): "gencode",
        (("human", "symbol"), ("mouse", "symbol")): "orthologs",
    }
    for (a, b), frame in list(frames.items()):  # each table read both ways
        frames[(b, a)] = frame.rename(columns={"src": "dst", "dst": "src"})[["src", "dst"]]
        used[(b, a)] = used[(a, b)]
    if (source, target) in frames:
        return frames[(source, target)], GENE_TABLES[used[(source, target)]][1]
    # two steps through human symbols (human Ensembl ↔ mouse symbol)
    hub = ("human", "symbol")
    if (source, hub) in frames and (hub, target) in frames:
        first, second = frames[(source, hub)], frames[(hub, target)]
        joined = first.merge(second, left_on="dst", right_on="src", suffixes=("", "_2"))
        tables = f"{GENE_TABLES[used[(source, hub)]][1]} and {GENE_TABLES[used[(hub, target)]][1]}"
        return joined[["src", "dst_2"]].rename(columns={"dst_2": "dst"}).drop_duplicates(), tables
    raise GeneTableError(
        f"No gene table maps {NAMESPACES.get(source, source)} to "
        f"{NAMESPACES.get(target, target)}: CellTypist's tables cover human Ensembl IDs, human "
        "symbols and mouse symbols. Rename the genes yourself, e.g. adata.var_names = "
        "adata.var['gene_symbols']."
    )


@dataclass(frozen=True)
class GeneMapping:
    """How gene names of one naming scheme map onto another (see :func:`~cellformer.pp.map_gene_names`).

    Attributes
    ----------
    query_idx
        Positions of the mapped genes in the names that were mapped.
    names
        Their names in the target scheme (one per position of ``query_idx``, all distinct).
    source, target
        The naming schemes, e.g. ``"human Ensembl IDs"``, ``"human symbols"``.
    tables
        The tables used.
    n_genes
        Genes that were mapped from.
    n_ambiguous
        Genes dropped because they map to several target genes, or share their target gene with
        another gene.
    ambiguous
        Some of them (for messages).
    """

    query_idx: np.ndarray
    names: np.ndarray
    source: str
    target: str
    tables: str
    n_genes: int
    n_ambiguous: int
    ambiguous: list[str] = field(default_factory=list)

    @property
    def n_mapped(self) -> int:
        """Genes with one target name."""
        return len(self.query_idx)

    @property
    def n_unmatched(self) -> int:
        """Genes without any target name in the table (or the target genes)."""
        return self.n_genes - self.n_mapped - self.n_ambiguous

    def summary(self) -> str:
        """One line: how many genes mapped, how many were ambiguous (dropped) or unmatched."""
        text = (
            f"Mapped {self.source} to {self.target} with {self.tables}: {self.n_mapped} of "
            f"{self.n_genes} genes mapped, {self.n_ambiguous} ambiguous (dropped"
        )
        if self.ambiguous:
            text += f", e.g. {', '.join(self.ambiguous[:3])}"
        return text + f"), {self.n_unmatched} without a match."

    def as_frame(self, query_names) -> pd.DataFrame:
        """Return the mapping as a table: ``source`` → ``target`` name."""
        query_names = np.asarray(pd.Index(query_names).astype(str))
        return pd.DataFrame({"source": query_names[self.query_idx], "target": self.names})


def _unique_pairs(pairs: pd.DataFrame) -> tuple[pd.DataFrame, set]:
    """Keep the pairs whose source and target each occur once; return the ambiguous sources."""
    many_dst = pairs["src"].duplicated(keep=False)
    many_src = pairs["dst"].duplicated(keep=False)
    ambiguous = set(pairs.loc[many_dst | many_src, "src"])
    return pairs[~(many_dst | many_src)], ambiguous


def map_gene_names(
    names,
    target=None,
    to: str | None = None,
    species: str | None = None,
    table: pd.DataFrame | dict | None = None,
    description: tuple[str, str, str] | None = None,
) -> GeneMapping:
    """Map gene names onto another naming scheme (Ensembl IDs, symbols, another species).

    Parameters
    ----------
    names
        The genes to map (e.g. a query's ``var_names``); Ensembl version suffixes are ignored.
    target
        Gene names to map onto (e.g. a model's genes): the scheme is theirs, and only pairs that
        reach one of them count, so a symbol with two IDs is unambiguous when the target has
        one of them.
    to, species
        Without ``target``: ``"symbol"`` or ``"ensembl"``, and ``"human"`` or ``"mouse"``
        (default: the species of ``names``).
    table
        A user's table instead of the built-in ones: a ``{name: target name}`` dict or a
        two-column DataFrame (name, target name). A name listed with several targets is an
        error.
    description
        ``(tables, source, target)`` words for the summary of a user's table.

    Returns
    -------
    A :class:`GeneMapping`; genes that map to several target genes, or whose target gene another
    gene maps to as well, are dropped and counted.
    """
    names = pd.Index(names).astype(str)
    if table is not None:
        pairs = _user_pairs(table)
        tables, source, target_words = description or ("the given table", "genes", "new names")
    else:
        _tables_dir()  # not installed: say so, not that the names are unknown
        src_ns = gene_namespace(names)
        if target is not None:
            dst_ns = gene_namespace(target)
        else:
            if to not in ("symbol", "ensembl"):
                raise InputError(f"to={to!r}: use 'symbol' or 'ensembl'.")
            if species not in (None, "human", "mouse"):
                raise InputError(f"species={species!r}: use 'human' or 'mouse'.")
            dst_ns = (species or src_ns[0] or "human", to)
        if src_ns[1] is None or src_ns[0] is None:
            raise GeneTableError(
                f"Cannot tell the species or kind of the genes to map (e.g. "
                f"{', '.join(names[:3])}): neither Ensembl IDs nor symbols found in the tables."
            )
        if dst_ns[0] is None:
            raise GeneTableError(
                f"Cannot tell the species or kind of the target genes (e.g. "
                f"{', '.join(pd.Index(target).astype(str)[:3])})."
            )
        if src_ns == dst_ns:  # the same scheme: only Ensembl version suffixes can differ
            keys = strip_version(names).unique()
            pairs, tables = pd.DataFrame({"src": keys, "dst": keys}), "IDs without versions"
        else:
            pairs, tables = _edges(src_ns, dst_ns)
        source, target_words = NAMESPACES.get(src_ns, "genes"), NAMESPACES.get(dst_ns, "genes")
    keys = strip_version(names)
    pairs = pairs[pairs["src"].isin(keys)]
    if target is not None:
        target = pd.Index(target).astype(str)
        # the target's own spelling (e.g. a versioned ID) of each table entry
        spelled = pd.Series(np.asarray(target), index=strip_version(target))
        spelled = spelled[~spelled.index.duplicated(keep=False)]
        pairs = pairs.assign(dst=strip_version(pairs["dst"]))
        pairs = pairs[pairs["dst"].isin(spelled.index)].assign(
            dst=lambda p: spelled.loc[p["dst"]].to_numpy()
        )
    pairs = pairs.drop_duplicates()
    unique, ambiguous = _unique_pairs(pairs)
    # several query genes with one key (e.g. two versions of an ID) are ambiguous too
    key_counts = pd.Series(keys).value_counts()
    repeated = set(key_counts.index[key_counts > 1])
    ambiguous |= repeated & set(unique["src"])
    unique = unique[~unique["src"].isin(repeated)]
    lookup = dict(zip(unique["src"], unique["dst"], strict=True))
    idx = np.array([i for i, k in enumerate(keys) if k in lookup], dtype=np.int64)
    mapped = np.array([lookup[keys[i]] for i in idx], dtype=object)
    n_ambiguous = int(np.isin(np.asarray(keys), list(ambiguous)).sum())
    return GeneMapping(
        query_idx=idx,
        names=mapped,
        source=source,
        target=target_words,
        tables=tables,
        n_genes=len(names),
        n_ambiguous=n_ambiguous,
        ambiguous=sorted(ambiguous)[:5],
    )


def _user_pairs(table) -> pd.DataFrame:
    if isinstance(table, dict):
        frame = pd.DataFrame({"src": list(table), "dst": list(table.values())})
    elif isinstance(table, pd.DataFrame) and table.shape[1] == 2:
        frame = pd.DataFrame(
            {"src": table.iloc[:, 0].to_numpy(), "dst": table.iloc[:, 1].to_numpy()}
        )
    else:
        raise InputError(
            "table= must be a {name: target name} dict or a DataFrame of two columns "
            f"(name, target name), got {type(table).__name__}"
            + (f" with {table.shape[1]} columns" if isinstance(table, pd.DataFrame) else "")
            + "."
        )
    frame = frame.dropna().astype(str)
    frame = frame[(frame["src"] != "") & (frame["dst"] != "")].drop_duplicates()
    several = frame["src"][frame["src"].duplicated()].unique()
    if len(several):
        raise GeneTableError(
            f"The gene table is ambiguous: {len(several)} names have several targets (e.g. "
            + ", ".join(
                f"{s} → {'/'.join(frame.loc[frame['src'] == s, 'dst'][:3])}" for s in several[:3]
            )
            + "). Keep one row per name (e.g. table.drop_duplicates(subset=table.columns[0])) "
            "or drop those names."
        )
    return frame


def map_genes(
    adata,
    to: str = "symbol",
    species: str | None = None,
    table: pd.DataFrame | dict | None = None,
    key_added: str = "original_name",
):
    """Rename an AnnData's genes to symbols or Ensembl IDs of a species (a new AnnData).

    Genes that do not map, or map ambiguously (one name to several genes, or several names to
    one gene), are dropped and counted in one logged line; the old names are kept in
    ``var[key_added]``. ``adata`` itself is not changed.

    Parameters
    ----------
    adata
        Cells × genes.
    to
        ``"symbol"`` or ``"ensembl"``.
    species
        ``"human"`` or ``"mouse"``; default: the species of ``adata``'s genes (human for
        Ensembl targets of mouse genes, which have no mouse-ID table).
    table
        A ``{name: new name}`` dict or a two-column DataFrame to use instead of the built-in
        tables (GENCODE v44, Ensembl 105 orthologs).
    key_added
        ``var`` column with the original names.

    Returns
    -------
    The AnnData on the mapped genes, with the new ``var_names``.

    Examples
    --------
    >>> import cellformer as cf
    >>> symbols = cf.pp.map_genes(adata_with_ensembl_ids, to="symbol")  # doctest: +SKIP
    >>> human = cf.pp.map_genes(mouse_adata, to="symbol", species="human")  # doctest: +SKIP
    """
    import anndata as ad

    if not isinstance(adata, ad.AnnData):
        raise InputError(f"map_genes needs an AnnData, got {type(adata).__name__}.")
    mapping = map_gene_names(adata.var_names, to=to, species=species, table=table)
    if mapping.n_mapped == 0:
        raise InputError(f"No gene could be mapped. {mapping.summary()}")
    logger.warning(mapping.summary())
    sub = adata[:, mapping.query_idx]
    sub = sub.to_memory() if adata.isbacked else sub.copy()
    sub.var[key_added] = np.asarray(adata.var_names)[mapping.query_idx]
    sub.var_names = pd.Index(mapping.names.astype(str))
    return sub


def combine(direct: np.ndarray, mapping: GeneMapping | None, target) -> np.ndarray:
    """Query position of each target gene: direct name matches first, then mapped names.

    ``direct``: the query position of each target gene by name (-1: none). Mapped query genes
    already matched directly, or mapped onto a gene matched directly, are not used again.
    """
    pos = direct.copy()
    if mapping is None or not mapping.n_mapped:
        return pos
    target = pd.Index(target).astype(str)
    taken = set(direct[direct >= 0].tolist())
    where = target.get_indexer(pd.Index(mapping.names.astype(str)))
    for query_i, target_i in zip(mapping.query_idx, where, strict=True):
        if target_i >= 0 and pos[target_i] < 0 and query_i not in taken:
            pos[target_i] = query_i
    return pos
