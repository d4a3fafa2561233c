"""Masked-expression pretraining objective on top of a :class:`TransformerModule` backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cellformer._errors import ParameterError
from cellformer.tokenizers import EXPRESSION, N_SPECIAL, SPECIAL_TOKENS

__all__ = ["MaskedExpressionModule", "mask_tokens"]

#: Token id of ``<mask>``.
MASK = SPECIAL_TOKENS.index("<mask>")

TARGETS = ("auto", "expression", "gene", "both")


def mask_tokens(
    tokens,
    mask_prob: float = 0.15,
    replace_prob: float = 0.8,
    random_prob: float = 0.1,
    target: str = "expression",
    n_genes: int | None = None,
    n_bins: int | None = None,
    generator: torch.Generator | None = None,
):
    """BERT-style masking of gene tokens, in place; return the boolean ``selected`` positions.

    ``mask_prob`` of the real gene tokens are selected (never padding, ``<cls>`` or context
    tokens). Of those, ``replace_prob`` are hidden (expression: the value becomes ``<mask>``;
    gene: the id becomes ``<mask>``), ``random_prob`` get a random value / gene, and the rest stay
    as they are; the loss is computed on all selected positions. The original values, bins and
    ids must be read *before* calling this.
    """
    if not 0 < mask_prob < 1:
        raise ParameterError(f"mask_prob must be in (0, 1), got {mask_prob}.")
    if replace_prob < 0 or random_prob < 0 or replace_prob + random_prob > 1:
        raise ParameterError("replace_prob and random_prob must be ≥ 0 with a sum of at most 1.")
    real = tokens.gene_mask & ~tokens.padding_mask
    shape, device = tokens.ids.shape, tokens.ids.device
    draw = torch.rand(shape, device=device, generator=generator)
    selected = real & (draw < mask_prob)
    action = torch.rand(shape, device=device, generator=generator)
    hide = selected & (action < replace_prob)
    randomise = selected & (action >= replace_prob) & (action < replace_prob + random_prob)
    if target in ("expression", "both"):
        tokens.value_mask = hide
        n = int(randomise.sum())
        if n:
            if tokens.bins is not None:
                low, high = 1, max(int(n_bins or 2), 2)
                random_bins = torch.randint(low, high, (n,), device=device, generator=generator)
                tokens.bins = tokens.bins.masked_scatter(randomise, random_bins)
            pool = tokens.values[real]
            pick = torch.randint(0, pool.numel(), (n,), device=device, generator=generator)
            tokens.values = tokens.values.masked_scatter(randomise, pool[pick])
    if target in ("gene", "both"):
        ids = tokens.ids.masked_fill(hide, MASK)
        n = int(randomise.sum())
        if n:
            random_ids = N_SPECIAL + torch.randint(
                0, n_genes, (n,), device=device, generator=generator
            )
            ids = ids.masked_scatter(randomise, random_ids)
        tokens.ids = ids
        if target == "gene":
            tokens.value_mask = None
    return selected


class MaskedExpressionModule(nn.Module):
    """Backbone + prediction heads for masked gene tokens.

    Parameters
    ----------
    backbone
        A :class:`~cellformer.module.TransformerModule` (its classification head is unused).
    target
        What to hide and predict: ``"expression"`` (the value: cross-entropy over bins for
        binned tokenizers, mean squared error for continuous ones), ``"gene"`` (the gene id:
        cross-entropy over genes), ``"both"``, or ``"auto"`` (expression when the tokenizer
        encodes it, else gene — Geneformer's rank tokens carry no value).
    mask_prob, replace_prob, random_prob
        See :func:`mask_tokens`.
    cell_prediction
        Also predict each hidden value from the pooled cell embedding (what a classifier reads)
        and the gene's identity alone, so that the embedding of the whole cell, not only each
        token, must carry the expression program (the idea of scGPT's "masked value prediction
        for cell modelling"). Without it the pooled embedding of a pretrained encoder is no
        more linearly separable by cell type than a random encoder's (see
        ``benchmarks/pretraining.py``). Expression targets only.
    """

    def __init__(
        self,
        backbone,
        target: str = "auto",
        mask_prob: float = 0.15,
        replace_prob: float = 0.8,
        random_prob: float = 0.1,
        cell_prediction: bool = True,
    ):
        super().__init__()
        if target not in TARGETS:
            raise ParameterError(f"target must be one of {TARGETS}, got {target!r}.")
        config = backbone.tokenizer.config
        part = EXPRESSION[config.expression]
        if target == "auto":
            target = "expression" if part.maskable else "gene"
        if target in ("expression", "both") and not part.maskable:
            raise ParameterError(
                f"The {config.expression!r} expression encoder has no value to hide: use "
                "target='gene' (or a tokenizer with an expression encoder)."
            )
        self.backbone = backbone
        self.target = target
        self.mask_prob, self.replace_prob, self.random_prob = mask_prob, replace_prob, random_prob
        d_model = backbone.norm.normalized_shape[0]
        self.binned = part.binned
        self.n_bins = config.n_bins
        heads = {}
        if target in ("expression", "both"):
            heads["expression"] = nn.Linear(d_model, self.n_bins if self.binned else 1)
        if target in ("gene", "both"):
            heads["gene"] = nn.Linear(d_model, backbone.n_input)
        self.cell_prediction = cell_prediction and "expression" in heads
        if self.cell_prediction:
            heads["cell_query"] = nn.Linear(d_model, d_model)
            heads["cell"] = nn.Linear(d_model, self.n_bins if self.binned else 1)
        self.heads = nn.ModuleDict(heads)
        self.out_norm = nn.LayerNorm(d_model)
        # the classifier's parts take no part in pretraining (DDP insists every trained
        # parameter gets a gradient); the pooling and its norm do with cell_prediction
        unused = [backbone.head, backbone.linear]
        if not self.cell_prediction:
            unused += [backbone.norm, backbone.readout]
        if target == "gene":
            unused.append(getattr(backbone.embed.expression, "mask_vector", None))
        for part in unused:
            if part is not None:
                part.requires_grad_(False)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> dict:
        """Loss on the selected tokens of log-normalised cells ``x``; also its parts."""
        b = self.backbone
        tokens = b.tokens(x)
        values, bins, ids = tokens.values.clone(), tokens.bins, tokens.ids.clone()
        selected = mask_tokens(
            tokens,
            self.mask_prob,
            self.replace_prob,
            self.random_prob,
            self.target,
            n_genes=b.n_input,
            n_bins=self.n_bins,
            generator=generator,
        )
        hidden = b.encoder(b.embed(tokens), tokens.padding_mask, b.neighbours(tokens))
        h = self.out_norm(hidden[selected])
        out = {"n_masked": int(selected.sum())}
        losses = []

        def value_loss(pred):
            if self.binned:
                return F.cross_entropy(pred, bins[selected])
            return F.mse_loss(pred.squeeze(-1), values[selected])

        if "expression" in self.heads:
            out["expression_loss"] = value_loss(self.heads["expression"](h))
            losses.append(out["expression_loss"])
        if self.cell_prediction:
            cells = b.pool(hidden, tokens)[selected.nonzero()[:, 0]]
            genes = self.heads["cell_query"](b.embed.gene(ids[selected]))
            out["cell_loss"] = value_loss(self.heads["cell"](cells * genes))
            losses.append(out["cell_loss"])
        if "gene" in self.heads:
            loss = F.cross_entropy(self.heads["gene"](h), ids[selected] - N_SPECIAL)
            out["gene_loss"] = loss
            losses.append(loss)
        if out["n_masked"] == 0:  # nothing selected in this batch: no signal, no NaN
            out["loss"] = h.sum() * 0.0
        else:
            out["loss"] = torch.stack(losses).sum()
        return out
