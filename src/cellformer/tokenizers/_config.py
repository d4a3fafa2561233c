"""Tokenizer configuration and the Geneformer / scGPT / scBERT presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

from cellformer._errors import ParameterError
from cellformer._utils import check_dataclass_types

from ._orders import ORDER
from ._parts import EXPRESSION

__all__ = ["PRESETS", "TokenizerConfig", "get_config"]

GENE_ENCODERS = ("learned", "table")
#: The built-in expression encoders (:data:`EXPRESSION` has them and the registered ones).
EXPRESSION_ENCODERS = ("none", "quantile_bins", "log_bins", "continuous")
REDUCE = ("sum", "concat", "product")


@dataclass(frozen=True)
class TokenizerConfig:
    """How a cell becomes a sequence of tokens (a Heimdall-style F_G / F_E / F_C composition).

    Parameters
    ----------
    gene_encoder
        F_G, gene identity: ``"learned"`` (an embedding per gene, random init) or ``"table"``
        (vectors from a user table, e.g. gene2vec; needs ``gene_embeddings`` in the model).
    expression
        F_E, expression value: ``"none"`` (no value embedding: the order carries it),
        ``"quantile_bins"`` (scGPT: per-cell quantile bins of the non-zero values, bin 0 = zero),
        ``"log_bins"`` (scBERT: ``floor(log value)`` clipped to ``n_bins - 1``) or
        ``"continuous"`` (a linear map or a small MLP of the log value).
    n_bins
        Number of expression bins, zero bin included.
    bin_log_base
        For ``"log_bins"``: the base of the logarithm the bins floor (``None``: natural, the
        log-normalised value itself; scBERT's preprocessing uses ``log2(1 + x)``, base 2).
    expression_mlp
        For ``"continuous"``: a 1 → d → d MLP instead of a linear map.
    value_scale
        Token values fed to a continuous encoder: ``"log"`` (the log-normalised value) or
        ``"zscore"`` (standardised per gene with the training cells' mean and standard
        deviation, zeros included, as for the linear model). Bins always use log values.
    order
        F_C order: ``"rank"`` (Geneformer rank value encoding: counts / library size / the gene's
        median non-zero value over training cells, descending), ``"expression"`` (log value,
        descending), ``"fixed"`` (the model's gene order), ``"random"``, or an order given to
        :func:`~cellformer.tokenizers.register_order`.
    drop_zeros
        Only genes detected in the cell become tokens (``False`` = every gene, zeros included).
    max_length
        Most gene tokens per cell (``None``: no limit). With ``"fixed"`` order the most expressed
        genes are kept, then put in gene order; otherwise the first ``max_length`` in the order.
    train_max_length
        During training only: a cell with more candidate tokens than this gets a random subset of
        them, a new one at every step (an augmentation that keeps a training step's cost at this
        length), then ordered and truncated as usual; prediction and embeddings see up to
        ``max_length`` tokens. ``None``: training sees what prediction sees. Needs no positional
        embedding (positions past it would never be trained).
    n_hvg
        Restrict the vocabulary to this many highly variable genes, chosen on training cells.
    reduce
        How gene and expression embeddings combine: ``"sum"``, ``"concat"`` (then a projection)
        or ``"product"`` (``gene ⊙ (1 + expression)``: the expression scales the gene's vector,
        so a mean of tokens can express an expression-weighted sum of gene embeddings).
    positional
        Add a learned positional embedding; ``None``: only when the order carries information
        (``"rank"`` and ``"expression"``; a registered order's ``informative``).
    cls_token
        Start every cell with ``<cls>``.
    context
        Context tokens after ``<cls>``: ``("batch",)`` adds a token for the cell's batch (the
        ``batch_key`` of ``setup_anndata``).
    embedding_norm
        LayerNorm on the summed token embedding (scBERT's Performer has none).
    paired
        Two time points per cell (an AnnData from :func:`cellformer.pp.pair_timepoints`: the
        genes, then the same genes of the previous time point): each half is tokenised on its
        own (ordered, truncated) and the cell becomes ``<cls> current… <sep> previous…``; a
        segment embedding tells the halves apart, and a gene has one identity vector in both.
    previous_share
        With ``paired``: the share of ``max_length`` (and ``train_max_length``) given to the
        previous time point.
    """

    gene_encoder: Literal["learned", "table"] = "learned"
    expression: str = "continuous"
    n_bins: int = 51
    bin_log_base: float | None = None
    expression_mlp: bool = True
    value_scale: Literal["log", "zscore"] = "log"
    order: str = "rank"
    drop_zeros: bool = True
    max_length: int | None = 256
    train_max_length: int | None = None
    n_hvg: int | None = None
    reduce: Literal["sum", "concat", "product"] = "sum"
    positional: bool | None = None
    cls_token: bool = True
    context: tuple[str, ...] = field(default_factory=tuple)
    embedding_norm: bool = True
    paired: bool = False
    previous_share: float = 0.5

    def __post_init__(self):
        for name, allowed in (
            ("gene_encoder", GENE_ENCODERS),
            ("expression", EXPRESSION),
            ("order", ORDER),
            ("reduce", REDUCE),
            ("value_scale", ("log", "zscore")),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ParameterError(f"Unknown {name}={value!r}; choose from {list(allowed)}.")
        check_dataclass_types(self, "tokenizer")  # types (NaN refused), then the ranges
        if self.max_length is not None and self.max_length < 1:
            raise ParameterError(
                f"max_length must be at least 1 (or None for no limit), got {self.max_length}."
            )
        if self.train_max_length is not None:
            if self.train_max_length < 1:
                raise ParameterError(
                    f"train_max_length must be at least 1 (or None), got {self.train_max_length}."
                )
            if self.use_positions:
                raise ParameterError(
                    "train_max_length needs positional=False: positions past it would never be "
                    "trained."
                )
        if not 0 < self.previous_share < 1:
            raise ParameterError(f"previous_share must be in (0, 1), got {self.previous_share}.")
        if self.paired and (self.max_length or 2) < 2:
            raise ParameterError(
                "paired=True needs max_length of at least 2 (a token per time point)."
            )
        if self.bin_log_base is not None and not self.bin_log_base > 1:
            raise ParameterError(f"bin_log_base must be above 1, got {self.bin_log_base}.")
        if self.n_bins < 2:
            raise ParameterError(f"n_bins must be at least 2 (bin 0 is zero), got {self.n_bins}.")
        if self.n_hvg is not None and self.n_hvg < 1:
            raise ParameterError(f"n_hvg must be positive or None, got {self.n_hvg}.")
        unknown = set(self.context) - {"batch"}
        if unknown:
            raise ParameterError(f"Unknown context tokens {sorted(unknown)}; supported: ['batch'].")
        object.__setattr__(self, "context", tuple(self.context))

    @property
    def use_positions(self) -> bool:
        """Whether a positional embedding is added."""
        if self.positional is None:
            return ORDER[self.order].informative
        return self.positional

    def to_dict(self) -> dict:
        """Plain dict (saved with the model)."""
        return dataclasses.asdict(self)


#: Named compositions. ``"default"`` is cellformer's choice (see ``benchmarks/`` and the docs).
PRESETS: dict[str, dict] = {
    # Geneformer (Theodoris et al. 2023): rank value encoding, no value embedding, 2,048 tokens
    "geneformer": {
        "expression": "none",
        "order": "rank",
        "drop_zeros": True,
        "max_length": 2048,
        "positional": True,
    },
    # scGPT (Cui et al. 2024): HVGs, per-cell quantile bins of non-zero values, gene set (no order)
    "scgpt": {
        "expression": "quantile_bins",
        "n_bins": 51,
        "order": "fixed",
        "drop_zeros": True,
        "max_length": 1200,
        "n_hvg": 1200,
        "positional": False,
    },
    # scBERT (Yang et al. 2022): every gene a token (zeros included), bins of log values
    "scbert": {
        "expression": "log_bins",
        "n_bins": 6,
        "order": "fixed",
        "drop_zeros": False,
        "max_length": None,
        "positional": False,
    },
    # cellformer's default: the detected genes (up to 1,024), each gene's vector scaled by an MLP
    # of its z-scored log value, no positions; a training step sees a random 128 of a cell's
    # genes (half the cost of 256 at the same accuracy, benchmarks/latent.py)
    "default": {
        "expression": "continuous",
        "expression_mlp": True,
        "value_scale": "zscore",
        "reduce": "product",
        "order": "rank",
        "drop_zeros": True,
        "max_length": 1024,
        "train_max_length": 128,
        "positional": False,
    },
}


def get_config(tokenizer: str | dict | TokenizerConfig = "default", **overrides) -> TokenizerConfig:
    """Build a :class:`~cellformer.tokenizers.TokenizerConfig` from a preset name, a dict or a config, with overrides.

    Examples
    --------
    >>> get_config("geneformer", max_length=512).max_length
    512
    """
    if isinstance(tokenizer, TokenizerConfig):
        base = tokenizer.to_dict()
    elif isinstance(tokenizer, str):
        if tokenizer not in PRESETS:
            raise ParameterError(
                f"Unknown tokenizer preset {tokenizer!r}; choose from {sorted(PRESETS)} or pass a "
                "dict of TokenizerConfig fields."
            )
        base = dict(PRESETS[tokenizer])
    elif isinstance(tokenizer, dict):
        base = dict(tokenizer)
        if "preset" in base:
            base = {**get_config(base.pop("preset")).to_dict(), **base}
    else:
        raise ParameterError(
            f"tokenizer must be a preset name, a dict or a TokenizerConfig, got {type(tokenizer)}."
        )
    names = {f.name for f in dataclasses.fields(TokenizerConfig)}
    unknown = set(base) | set(overrides)
    unknown -= names
    if unknown:
        raise ParameterError(
            f"Unknown tokenizer options {sorted(unknown)}; valid: {sorted(names)}."
        )
    return TokenizerConfig(**{**base, **overrides})
