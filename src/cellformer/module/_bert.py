"""A classifier whose encoder is a Hugging Face BERT (Geneformer checkpoints)."""

from __future__ import annotations

from typing import Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import auto_move_data

from cellformer._errors import ParameterError
from cellformer._utils import freeze_all_but_last, import_transformers
from cellformer.tokenizers import RankValueTokenizer

from ._classifier import ClassifierModuleBase, LinearPathModuleMixin, NewHeadMixin

__all__ = ["BertModule"]


class BertModule(NewHeadMixin, LinearPathModuleMixin, ClassifierModuleBase):
    """Rank value tokens → BERT → mean of the gene tokens' hidden states → classifier.

    Parameters
    ----------
    n_input
        Number of genes of the model (its ``var_names``).
    n_labels
        Number of cell types.
    bert_config
        The checkpoint's ``config.json`` as a dict (a ``transformers.BertConfig``).
    token_ids
        ``(n_input,)`` token id of each gene, ``-1`` where the token dictionary lacks it.
    medians
        ``(n_input,)`` the genes' medians from the gene median dictionary.
    special_tokens
        ``{"<pad>": id, "<cls>": id, "<eos>": id}`` (``<cls>``/``<eos>`` only for V2 models).
    embedding_layer
        Hidden states pooled into the cell embedding: ``-1`` the final layer, ``-2`` the
        penultimate (Geneformer's default for extracting embeddings), ...
    trainable_layers
        Train only the last ``trainable_layers`` BERT layers (embeddings and earlier layers
        frozen); ``None``: all; ``0``: the head only.
    head, prior_sigma, init_sigma, kl_weight, class_balance, linear_path
        As for :class:`~cellformer.module.TransformerModule`.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        bert_config: dict,
        token_ids,
        medians,
        special_tokens: dict,
        input_kind: Literal["counts"] = "counts",
        embedding_layer: int = -1,
        trainable_layers: int | None = None,
        head: Literal["linear", "bayesian"] = "linear",
        prior_sigma: float = 1.0,
        init_sigma: float = 0.1,
        kl_weight: float = 1.0,
        class_balance: bool = True,
        linear_path: bool = True,
    ):
        super().__init__(
            n_input, n_labels, input_kind, class_balance=class_balance, kl_weight=kl_weight
        )
        transformers = import_transformers()
        config = transformers.BertConfig.from_dict(dict(bert_config))
        self.bert = transformers.BertModel(config, add_pooling_layer=False)
        self.bert_config = config.to_dict()
        n_layers = config.num_hidden_layers
        if not -(n_layers + 1) <= embedding_layer <= n_layers:
            raise ParameterError(
                f"embedding_layer must index the {n_layers + 1} hidden states (-1: the final "
                f"layer, -2: the penultimate), got {embedding_layer}."
            )
        self.embedding_layer = int(embedding_layer)
        self.rank_value = RankValueTokenizer(
            token_ids,
            medians,
            input_size=config.max_position_embeddings,
            pad_id=special_tokens.get("<pad>", 0),
            cls_id=special_tokens.get("<cls>"),
            eos_id=special_tokens.get("<eos>"),
        )
        d_model = config.hidden_size
        self._init_head(
            d_model,
            n_input,
            n_labels,
            head,
            config.hidden_dropout_prob,
            prior_sigma,
            init_sigma,
            linear_path,
        )
        self.set_trainable_layers(trainable_layers)

    def set_trainable_layers(self, trainable_layers: int | None) -> None:
        """Freeze the embeddings and all but the last ``trainable_layers`` BERT layers."""
        self.bert.requires_grad_(True)
        freeze_all_but_last(self.bert.embeddings, self.bert.encoder.layer, trainable_layers)
        self.trainable_layers = trainable_layers

    # -- data -----------------------------------------------------------------------------------
    def _get_inference_input(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = super()._get_inference_input(tensors)
        counts = tensors[REGISTRY_KEYS.X_KEY]
        library = tensors.get(REGISTRY_KEYS.SIZE_FACTOR_KEY)
        if library is None:
            library = counts.sum(dim=1)
        return {**out, "counts": counts, "library": library.view(-1)}

    def tokens(self, counts: torch.Tensor, library: torch.Tensor):
        """Rank value token ids ``(cells, tokens)`` and each cell's length (on ``counts``' device).

        Computed in float64 NumPy on the CPU, exactly as Geneformer's tokenizer does.
        """
        ids, lengths = self.rank_value.encode(
            counts.detach().double().cpu().numpy(), library.detach().double().cpu().numpy()
        )
        device = counts.device
        return torch.as_tensor(ids, device=device), torch.as_tensor(lengths, device=device)

    def gene_token_mask(self, lengths: torch.Tensor, n_tokens: int) -> torch.Tensor:
        """``(cells, tokens)``: the gene tokens (not ``<cls>``, ``<eos>`` or padding)."""
        position = torch.arange(n_tokens, device=lengths.device)[None]
        if not self.rank_value.special:
            return position < lengths[:, None]
        return (position >= 1) & (position < lengths[:, None] - 1)

    # -- forward --------------------------------------------------------------------------------
    def hidden_states(self, counts: torch.Tensor, library: torch.Tensor, layer: int | None = None):
        """Hidden states of ``layer`` (default ``embedding_layer``) and the gene token mask."""
        ids, lengths = self.tokens(counts, library)
        attention = (torch.arange(ids.shape[1], device=ids.device)[None] < lengths[:, None]).long()
        layer = self.embedding_layer if layer is None else layer
        out = self.bert(input_ids=ids, attention_mask=attention, output_hidden_states=layer != -1)
        h = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
        return h, self.gene_token_mask(lengths, ids.shape[1])

    def embed_cells(self, counts: torch.Tensor, library: torch.Tensor) -> torch.Tensor:
        """Geneformer's cell embedding: the mean of the gene tokens' hidden states."""
        h, genes = self.hidden_states(counts, library)
        weights = genes.to(h.dtype).unsqueeze(-1)
        return (h * weights).sum(1) / weights.sum(1).clamp_min(1.0)

    @auto_move_data
    def inference(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        counts: torch.Tensor | None = None,
        library: torch.Tensor | None = None,
    ) -> dict:
        """Cell embedding ``z`` and logits; ``x`` (log-normalised) feeds the linear path only."""
        if counts is None or library is None:
            raise ParameterError("A BERT module tokenises raw counts: pass counts= and library=.")
        z = self.embed_cells(counts.to(x.device), library.to(x.device))
        return self._add_paths({"z": z, "logits": self.classify(z)}, x)
