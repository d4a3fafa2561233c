"""A classifier whose encoder is scGPT's transformer (its published checkpoints)."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import auto_move_data
from torch import nn

from cellformer._errors import ParameterError
from cellformer._utils import freeze_all_but_last
from cellformer.nn import Dropout
from cellformer.tokenizers import ScGPTTokenizer

from ._classifier import ClassifierModuleBase, LinearPathModuleMixin, NewHeadMixin

__all__ = ["SCGPT_DEFAULTS", "ScGPTModule"]

#: Architecture of scGPT's whole-human checkpoint, used for what an ``args.json`` leaves out.
SCGPT_DEFAULTS = {
    "d_model": 512,
    "n_heads": 8,
    "d_ff": 512,
    "n_layers": 12,
    "dropout": 0.2,
    "pad_value": -2.0,
    "n_bins": 51,
    "max_length": 1200,
    "input_emb_style": "continuous",
    "n_value_tokens": None,
}

#: scGPT's continuous value encoder clips values at this before its MLP.
MAX_VALUE = 512.0


class ValueEncoder(nn.Module):
    """scGPT's value embedding: ``LayerNorm(W2 relu(W1 v))`` (continuous) or a bin table.

    Parameters
    ----------
    d_model
        Embedding width.
    style
        ``"continuous"`` (a bin index as a number through a two-layer MLP) or ``"category"``
        (a row of a table per bin).
    n_value_tokens
        Rows of the table (``"category"`` only).
    padding_idx
        The table's padding row (scGPT's ``pad_value``; ``"category"`` only).
    dropout
        Dropout on the continuous embedding (scGPT's).
    """

    def __init__(
        self,
        d_model: int,
        style: Literal["continuous", "category"] = "continuous",
        n_value_tokens: int | None = None,
        padding_idx: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.style = style
        if style == "continuous":
            self.linear1 = nn.Linear(1, d_model)
            self.linear2 = nn.Linear(d_model, d_model)
            self.dropout = Dropout(dropout)
        elif style == "category":
            if not n_value_tokens:
                raise ParameterError("A 'category' value encoder needs n_value_tokens.")
            self.embedding = nn.Embedding(n_value_tokens, d_model, padding_idx=padding_idx)
        else:
            raise ParameterError(
                f"scGPT's value embedding must be 'continuous' or 'category', got {style!r}."
            )
        self.norm = nn.LayerNorm(d_model)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if self.style == "category":
            return self.norm(self.embedding(values.long()))
        h = torch.relu(self.linear1(values.clamp(max=MAX_VALUE).unsqueeze(-1)))
        return self.dropout(self.norm(self.linear2(h)))


class ScGPTInput(nn.Module):
    """A token's input: ``LayerNorm(gene embedding) + value embedding`` (scGPT's ``_encode``)."""

    def __init__(self, n_rows: int, d_model: int, value: ValueEncoder, pad_id: int = 0):
        super().__init__()
        self.gene = nn.Embedding(n_rows, d_model, padding_idx=pad_id)
        self.gene_norm = nn.LayerNorm(d_model)
        self.value = value

    def forward(self, ids: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        return self.gene_norm(self.gene(ids)) + self.value(values)


class ScGPTModule(NewHeadMixin, LinearPathModuleMixin, ClassifierModuleBase):
    """scGPT tokens → post-LayerNorm transformer → ``<cls>`` hidden state → classifier.

    The gene table holds only the model's genes: row 0 is ``<pad>``, row 1 ``<cls>``, then the
    genes in the vocabulary, in the model's gene order (copied from the checkpoint's rows).

    Parameters
    ----------
    n_input
        Number of genes of the model (its ``var_names``).
    n_labels
        Number of cell types.
    scgpt_config
        Architecture (keys of :attr:`DEFAULTS`).
    token_ids
        ``(n_input,)`` each gene's row of the gene table, ``-1`` where the vocabulary lacks it.
    input_kind
        The registered layer's kind (bins depend only on each cell's order of values).
    trainable_layers
        Train only the last ``trainable_layers`` transformer layers (the embeddings and earlier
        layers frozen); ``None``: all; ``0``: the head only.
    head, prior_sigma, init_sigma, kl_weight, class_balance, linear_path
        As for :class:`~cellformer.module.TransformerModule`.
    seed
        Seed of the tokenizer's per-cell draws.
    """

    PAD_ID = 0
    CLS_ID = 1
    #: The architecture of the published whole-human scGPT checkpoint, in cellformer's keys.
    DEFAULTS = SCGPT_DEFAULTS

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        scgpt_config: dict,
        token_ids,
        input_kind: Literal["counts", "lognorm"] = "counts",
        trainable_layers: int | None = None,
        head: Literal["linear", "bayesian"] = "linear",
        prior_sigma: float = 1.0,
        init_sigma: float = 0.1,
        kl_weight: float = 1.0,
        class_balance: bool = True,
        linear_path: bool = True,
        seed: int = 0,
    ):
        super().__init__(
            n_input, n_labels, input_kind, class_balance=class_balance, kl_weight=kl_weight
        )
        config = {**SCGPT_DEFAULTS, **scgpt_config}
        self.scgpt_config = config
        d_model = int(config["d_model"])
        self.tokenizer = ScGPTTokenizer(
            token_ids,
            cls_id=self.CLS_ID,
            pad_id=self.PAD_ID,
            pad_value=config["pad_value"],
            n_bins=config["n_bins"],
            max_length=config["max_length"],
            seed=seed,
        )
        value = ValueEncoder(
            d_model,
            config["input_emb_style"],
            config["n_value_tokens"],
            padding_idx=int(config["pad_value"]) if config["n_value_tokens"] else None,
            dropout=config["dropout"],
        )
        n_rows = 2 + int((self.tokenizer.token_ids >= 0).sum())
        self.embed = ScGPTInput(n_rows, d_model, value, pad_id=self.PAD_ID)
        layer = nn.TransformerEncoderLayer(
            d_model,
            int(config["n_heads"]),
            int(config["d_ff"]),
            float(config["dropout"]),
            batch_first=True,
        )
        self.encoder = nn.TransformerEncoder(
            layer, int(config["n_layers"]), enable_nested_tensor=False
        )
        self._init_head(
            d_model,
            n_input,
            n_labels,
            head,
            config["dropout"],
            prior_sigma,
            init_sigma,
            linear_path,
        )
        self.set_trainable_layers(trainable_layers)

    def set_trainable_layers(self, trainable_layers: int | None) -> None:
        """Freeze the embeddings and all but the last ``trainable_layers`` transformer layers."""
        self.encoder.requires_grad_(True)
        self.embed.requires_grad_(True)
        freeze_all_but_last(self.embed, self.encoder.layers, trainable_layers)
        self.trainable_layers = trainable_layers

    # -- data -----------------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super()._get_inference_input(tensors)
        return {**out, "values": tensors[REGISTRY_KEYS.X_KEY]}

    def tokens(self, values: torch.Tensor, rng=None):
        """Token ids, their values and the padding mask ``(cells, tokens)`` on ``values``' device."""
        ids, vals, _ = self.tokenizer.encode(values.detach().float().cpu().numpy(), rng=rng)
        ids = torch.as_tensor(ids, device=values.device)
        return ids, torch.as_tensor(vals, device=values.device), ids.eq(self.PAD_ID)

    # -- forward --------------------------------------------------------------------------------
    def encode_tokens(
        self, ids: torch.Tensor, values: torch.Tensor, padding: torch.Tensor
    ) -> torch.Tensor:
        """Hidden states ``(cells, tokens, d_model)`` of tokenised cells (scGPT's ``_encode``)."""
        return self.encoder(self.embed(ids, values), src_key_padding_mask=padding)

    def embed_cells(self, values: torch.Tensor) -> torch.Tensor:
        """Return the ``<cls>`` token's final hidden state (scGPT's cell embedding, unnormalised)."""
        return self.encode_tokens(*self.tokens(values))[:, 0]

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        values: torch.Tensor | None = None,
    ) -> dict:
        """Cell embedding ``z`` and logits; ``x`` (log-normalised) feeds the linear path only."""
        if values is None:
            raise ParameterError("An scGPT module tokenises the cells' values: pass values=.")
        z = self.embed_cells(values.to(x.device))
        return self._add_paths({"z": z, "logits": self.classify(z)}, x)
