"""Expression encoders (F_E) as registered parts: each owns its bins, embedding and capabilities.

A part says what it is (``has_value``, ``binned``, ``maskable``) and does two things: the
tokenizer asks it for the bins of the tokens' values (:meth:`ExpressionPart.bins`), and the
token embedding asks it to build its layers and to embed tokens
(:meth:`ExpressionPart.build`, :meth:`ExpressionPart.embed`). Adding an encoder is one subclass
and :func:`register_expression`; ``TokenizerConfig(expression=name)`` then takes it.
"""

from __future__ import annotations

import torch
from torch import nn

from cellformer._errors import ParameterError

from ._ops import _quantile_bins

__all__ = ["EXPRESSION", "ExpressionPart", "register_expression"]


class ExpressionPart:
    """Base of an expression encoder: no value at all (the ``"none"`` encoder).

    Class attributes (capabilities the rest of cellformer reads, instead of names):

    ``has_value``
        Tokens carry an embedding of their value (``False``: the order alone carries it).
    ``binned``
        Values are embedded as bins (``config.n_bins`` of them); masked-expression
        pretraining then predicts the bin by cross-entropy, else the value by squared error.
    ``maskable``
        Pretraining may hide the value (the embedding has a ``<mask>`` for it).
    ``dense_bins``
        Bins of one token depend on its value only (not on the cell's other values), so the
        tokenizer may bin a whole cells × genes matrix at once.
    """

    has_value: bool = False
    binned: bool = False
    maskable: bool = False
    dense_bins: bool = True

    def bins(
        self,
        tokenizer,
        values: torch.Tensor,
        rows: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Bins of ``values`` (log-normalised; ``rows``/``counts``: each entry's cell), or ``None``."""
        return None

    def build(self, module: nn.Module, config, d_model: int) -> None:
        """Add the encoder's layers to ``module`` (an :class:`ExpressionEncoder`)."""

    def embed(self, module: nn.Module, tokens) -> torch.Tensor | None:
        """``(cells, tokens, d_model)`` embeddings of the tokens' values, or ``None``."""
        return None


class _BinTable(ExpressionPart):
    """Bins through an embedding table, with one extra ``<mask>`` row for pretraining."""

    has_value = binned = maskable = True

    def build(self, module, config, d_model):
        module.mask_bin = config.n_bins  # the extra row of the bin table
        module.embedding = nn.Embedding(config.n_bins + 1, d_model)

    def embed(self, module, tokens):
        hidden = tokens.value_mask
        bins = tokens.bins if hidden is None else tokens.bins.masked_fill(hidden, module.mask_bin)
        return module.embedding(bins)


class QuantileBins(_BinTable):
    """scGPT: per-cell quantile bins of the non-zero values (bin 0 = zero)."""

    dense_bins = False

    def bins(self, tokenizer, values, rows=None, counts=None):
        return _quantile_bins(rows, values, counts, tokenizer.config.n_bins)


class LogBins(_BinTable):
    """scBERT: ``floor(log value)`` (in ``bin_log_base``) clipped to ``n_bins - 1``."""

    def bins(self, tokenizer, values, rows=None, counts=None):
        return tokenizer._log_bins(values)


class Continuous(ExpressionPart):
    """The log value through a linear map (or a 1 → d → d GELU MLP), a learned mask vector."""

    has_value = maskable = True

    def build(self, module, config, d_model):
        if config.expression_mlp:
            module.net = nn.Sequential(
                nn.Linear(1, d_model), nn.GELU(), nn.Linear(d_model, d_model)
            )
        else:
            module.net = nn.Linear(1, d_model, bias=False)
        module.mask_vector = nn.Parameter(torch.zeros(d_model))

    def embed(self, module, tokens):
        out = module.net(tokens.values.unsqueeze(-1))
        if tokens.value_mask is not None:
            hidden = tokens.value_mask.unsqueeze(-1)
            out = torch.where(hidden, module.mask_vector.to(out.dtype), out)
        return out


#: Expression encoders by name (``TokenizerConfig(expression=...)``).
EXPRESSION: dict[str, ExpressionPart] = {
    "none": ExpressionPart(),
    "quantile_bins": QuantileBins(),
    "log_bins": LogBins(),
    "continuous": Continuous(),
}


def register_expression(name: str, part: ExpressionPart | type[ExpressionPart] | None = None):
    """Register an expression encoder under ``name`` (usable as a class decorator).

    ``part`` is an :class:`ExpressionPart` subclass (or instance) that sets its capabilities and
    implements ``build``/``embed`` (and ``bins`` when ``binned``). Afterwards
    ``TokenizerConfig(expression=name)`` (and a tokenizer dict ``{"expression": name}``) use it.
    """

    def add(part):
        instance = part() if isinstance(part, type) else part
        if not isinstance(instance, ExpressionPart):
            raise ParameterError(f"An expression encoder must be an ExpressionPart, got {part!r}.")
        if not isinstance(name, str) or not name:
            raise ParameterError(f"An expression encoder needs a name, got {name!r}.")
        known = EXPRESSION.get(name)
        if known is not None and type(known) is not type(instance):
            raise ParameterError(
                f"Expression encoder {name!r} is already registered ({type(known).__name__})."
            )
        EXPRESSION[name] = instance
        return part

    return add if part is None else add(part)
