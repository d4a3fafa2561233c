"""Geneformer checkpoints inside the scvi-tools API: zero-shot embeddings and fine-tuning."""

from __future__ import annotations

import glob
import json
import logging
import pickle
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import torch

from cellformer import _core
from cellformer._errors import ParameterError
from cellformer._utils import import_transformers, seeded
from cellformer.module import BertModule

from ._checkpoint import CheckpointClassifier, gene_ids, head_config, map_to_vocabulary
from .base import register_checkpoint
from .base._files import NUMPY_GLOBALS, restricted_load

__all__ = ["GeneformerClassifier", "is_geneformer_checkpoint"]

logger = logging.getLogger("cellformer")

SPECIAL = ("<pad>", "<mask>", "<cls>", "<eos>")
EMBEDDING_LAYERS = {"final": -1, "penultimate": -2}


def is_geneformer_checkpoint(path) -> bool:
    """Whether ``path`` is a directory holding a Hugging Face BERT ``config.json``."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "bert"
    except (OSError, ValueError):
        return False


def _read_pickle(path, what: str) -> dict:
    """Read a Geneformer dictionary (gene → token or median): builtins and numpy scalars only.

    Read by a restricted unpickler: a file that would import anything else is refused.
    """
    try:
        data = Path(path).read_bytes()
        table = restricted_load(data, NUMPY_GLOBALS, repr(str(path)), f"the {what}")
    except (OSError, pickle.UnpicklingError, EOFError) as err:
        raise _core.InputError(f"Cannot read the {what} {str(path)!r}: {err}.") from err
    if not isinstance(table, dict):
        raise _core.InputError(
            f"The {what} {str(path)!r} holds a {type(table).__name__}, not a dict."
        )
    return table


def _find_dictionary(directory: Path, given, pattern: str, what: str) -> dict:
    if isinstance(given, dict):
        return given
    if given is not None:
        return _read_pickle(given, what)
    found = sorted(glob.glob(str(directory / pattern)))
    if len(found) != 1:
        arg = "token_dictionary" if "token" in pattern else "gene_median_dictionary"
        raise _core.InputError(
            f"{'No' if not found else 'More than one'} {what} ({pattern}) in {str(directory)!r}"
            f"{': ' + ', '.join(Path(f).name for f in found) if found else ''}. Pass "
            f"{arg}='path/to/{pattern.replace('*', '')}' (Geneformer ships it in its repository's "
            "geneformer/ folder)."
        )
    return _read_pickle(found[0], what)


class GeneformerClassifier(CheckpointClassifier):
    """A cell-type classifier on a Geneformer checkpoint (Hugging Face BERT).

    Build it with :meth:`from_pretrained` (or :meth:`CellTransformer.from_pretrained
    <cellformer.model.CellTransformer.from_pretrained>`, which detects the format). Cells are
    tokenised by Geneformer's rank value encoding from raw counts
    (:class:`~cellformer.tokenizers.RankValueTokenizer`); the cell embedding
    (``get_latent_representation``) is the mean of the gene tokens' hidden states of
    ``embedding_layer``, Geneformer's own; a new head (linear or Bayesian), optionally beside
    cellformer's linear path, classifies it.

    Parameters
    ----------
    adata
        AnnData of raw counts registered with :meth:`setup_anndata`.
    bert_config
        The checkpoint's ``config.json`` (dict).
    token_ids
        Token id of each gene of ``adata`` (``-1``: not in the token dictionary).
    medians
        Each gene's median from the gene median dictionary (NaN where unknown).
    special_tokens
        Ids of ``<pad>``, ``<mask>``, ``<cls>``, ``<eos>`` in the token dictionary (those it has).
    embedding_layer
        ``"final"`` (default) or ``"penultimate"`` (Geneformer's ``emb_layer=-1``), or an index
        into the hidden states.
    trainable_layers
        Fine-tune only the last ``trainable_layers`` BERT layers (and the head); ``None``:
        everything; ``0``: the head only.
    head
        ``"linear"`` or ``"bayesian"``.
    linear_path
        Add cellformer's linear path (a frozen logistic regression on every gene) to the logits.
    class_balance
        As for :class:`~cellformer.model.CellTransformer`.
    seed
        Seed of the new head's initialisation.
    registry, input_kind
        Internal (used by :meth:`load`).
    **head_options
        ``prior_sigma``, ``init_sigma``, ``kl_weight`` of a Bayesian head, as for
        :class:`~cellformer.model.CellTransformer` (:class:`~cellformer.nn.EncoderConfig`
        holds their defaults).
    """

    _module_cls = BertModule
    #: Fine-tuning rates of Geneformer's cell classification examples (the new head gets
    #: ``BertModule.head_lr``).
    _plan_defaults = {"lr": 5e-5, "weight_decay": 0.001, "warmup_fraction": 0.1}
    _checkpoint_name = "Geneformer's rank value encoding"

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        bert_config: dict | None = None,
        token_ids: list[int] | None = None,
        medians: list[float] | None = None,
        special_tokens: dict | None = None,
        embedding_layer: Literal["final", "penultimate"] | int = "final",
        trainable_layers: int | None = None,
        head: Literal["linear", "bayesian"] = "linear",
        linear_path: bool = True,
        class_balance: bool = True,
        seed: int | None = 0,
        registry: dict | None = None,
        input_kind: Literal["counts"] | None = None,
        **head_options,
    ):
        network = head_config(head, linear_path, head_options)
        super().__init__(adata, registry=registry, input_kind=input_kind)
        if bert_config is None or token_ids is None or medians is None:
            raise ParameterError(
                "Build a GeneformerClassifier with GeneformerClassifier.from_pretrained(path, "
                "adata, labels_key=...)."
            )
        if self.input_kind_ != "counts":
            raise self._counts_error()
        layer_index = EMBEDDING_LAYERS.get(embedding_layer, embedding_layer)
        if not isinstance(layer_index, int):
            raise ParameterError(
                f"embedding_layer must be 'final', 'penultimate' or an int, got {embedding_layer!r}."
            )
        with seeded(seed):  # the same initialisation for the same seed, caller's state kept
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_labels=self.n_classes,
                bert_config=bert_config,
                token_ids=np.asarray(token_ids, dtype=np.int64),
                medians=np.asarray(medians, dtype=np.float64),
                special_tokens=dict(special_tokens or {}),
                embedding_layer=layer_index,
                trainable_layers=trainable_layers,
                head=network.head,
                prior_sigma=network.prior_sigma,
                init_sigma=network.init_sigma,
                kl_weight=network.kl_weight,
                class_balance=class_balance,
                linear_path=network.linear_path,
            )
        input_kind = self.input_kind_
        self.init_params_ = self._get_init_params(locals())

    # -- building from a checkpoint ---------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        adata: ad.AnnData,
        labels_key: str,
        layer: str | None = None,
        token_dictionary: str | Path | dict | None = None,
        gene_median_dictionary: str | Path | dict | None = None,
        gene_id_key: str | None = None,
        gene_mapping: dict | None = None,
        library_size_key: str | None = None,
        **kwargs,
    ) -> GeneformerClassifier:
        """Build a classifier on a Geneformer checkpoint directory.

        Parameters
        ----------
        path
            Directory of a Hugging Face ``BertForMaskedLM`` (``config.json`` and the weights),
            e.g. a clone of ``ctheodoris/Geneformer`` or one of its model folders.
        adata
            Cells with raw counts (``adata.X`` or ``layer``); labelled cells train the head.
        labels_key
            Column of cell types (``setup_anndata``'s).
        layer
            Layer with raw counts.
        token_dictionary, gene_median_dictionary
            The pickles (paths or dicts) Geneformer tokenises with; by default the single
            ``*token_dictionary*.pkl`` and ``*median_dictionary*.pkl`` in ``path``.
        gene_id_key
            ``var`` column with the Ensembl IDs the dictionaries use; default ``"ensembl_id"``
            when ``var`` has it (Geneformer's convention), else ``var_names``.
        gene_mapping
            ``{gene name: Ensembl ID}`` applied to the gene IDs first (e.g. symbols to IDs).
        library_size_key
            ``obs`` column of each cell's total counts (Geneformer's ``n_counts``) when ``adata``
            holds a gene subset; default ``"n_counts"`` when present, else the sums over
            ``adata``'s genes.
        **kwargs
            :class:`GeneformerClassifier` arguments (``embedding_layer``, ``trainable_layers``,
            ``head``, ``linear_path`` ...).
        """
        transformers = import_transformers()
        directory = Path(path)
        if not is_geneformer_checkpoint(directory):
            raise _core.InputError(
                f"{str(directory)!r} is not a Geneformer checkpoint: it needs a config.json with "
                "model_type 'bert' beside the weights."
            )
        tokens = _find_dictionary(
            directory, token_dictionary, "*token_dictionary*.pkl", "token dictionary"
        )
        medians = _find_dictionary(
            directory, gene_median_dictionary, "*median_dictionary*.pkl", "gene median dictionary"
        )
        if library_size_key is None and "n_counts" in adata.obs:
            library_size_key = "n_counts"
        cls.setup_anndata(
            adata, labels_key=labels_key, layer=layer, library_size_key=library_size_key
        )
        ids = gene_ids(adata, gene_id_key, gene_mapping, default="ensembl_id")
        if gene_mapping is None:
            ids = map_to_vocabulary(ids, [k for k in tokens if k not in SPECIAL])
        token_ids = np.array([tokens.get(g, -1) for g in ids], dtype=np.int64)
        known = (token_ids >= 0) & np.array([g in medians for g in ids])
        if not known.any():
            raise _core.InputError(
                f"The token dictionary covers none of the {len(ids)} genes of adata (first: "
                f"{', '.join(map(str, ids[:3]))}; the dictionary's: "
                f"{', '.join(k for k in list(tokens)[:6] if k not in SPECIAL)}). Geneformer's "
                "dictionaries are keyed by Ensembl gene IDs: pass gene_id_key='a var column of "
                "IDs' or gene_mapping={symbol: ID}."
            )
        token_ids[~known] = -1
        if (~known).any():
            logger.info(
                "%d of %d genes are not in the token dictionary and are dropped (e.g. %s).",
                int((~known).sum()),
                len(ids),
                ", ".join(map(str, np.asarray(ids)[~known][:5])),
            )
        config = json.loads((directory / "config.json").read_text())
        model = cls(
            adata,
            bert_config=config,
            token_ids=token_ids.tolist(),
            medians=[
                float(medians[g]) if k else float("nan") for g, k in zip(ids, known, strict=True)
            ],
            special_tokens={t: int(tokens[t]) for t in SPECIAL if t in tokens},
            **kwargs,
        )
        # the published checkpoints are BertForMaskedLM: its .bert is the encoder (the MLM head
        # is not used)
        pretrained = transformers.BertForMaskedLM.from_pretrained(directory).bert
        model.module.bert.load_state_dict(pretrained.state_dict())  # keeps requires_grad
        rank = model.module.rank_value
        logger.info(
            "Loaded Geneformer checkpoint %s: %d layers, hidden size %d, input size %d%s; %d of "
            "%d genes in its dictionary.",
            directory.name,
            config.get("num_hidden_layers"),
            config.get("hidden_size"),
            rank.input_size,
            " with <cls>/<eos>" if rank.special else "",
            int(known.sum()),
            len(ids),
        )
        return model

    # -- inference hooks ------------------------------------------------------------------------
    @property
    def _tokens_per_cell(self) -> int:
        return self.module.rank_value.input_size

    def _checkpoint_inputs(self, values: torch.Tensor, library: torch.Tensor) -> dict:
        return {"counts": values, "library": library}

    def tokenize(self, adata: ad.AnnData | None = None, layer: str | None = None) -> dict:
        """Tokens Geneformer sees for each cell (see :meth:`CellformerModel.tokenize`).

        ``ids`` are Geneformer's token ids, ``tokens`` the model's gene names (``"<pad>"``,
        ``"<cls>"``, ``"<eos>"`` for its special tokens); rank value encoding has no values
        (``values`` is NaN).
        """
        data = self._resolve(adata, layer)
        out = []
        for start in range(0, data.adata.n_obs, 1024):
            idx = np.arange(start, min(start + 1024, data.adata.n_obs))
            inputs = self._chunk_inputs(data, idx, "cpu")
            ids, _ = self.module.rank_value.encode(
                inputs["counts"].double().numpy(), inputs["library"].numpy()
            )
            out.append(ids)
        width = max(o.shape[1] for o in out)
        pad = self.module.rank_value.pad_id
        ids = np.concatenate(
            [np.pad(o, ((0, 0), (0, width - o.shape[1])), constant_values=pad) for o in out]
        )
        rank = self.module.rank_value
        names = {int(t): str(g) for t, g in zip(rank.token_ids, self.var_names, strict=True)}
        specials = {rank.pad_id: "<pad>", rank.cls_id: "<cls>", rank.eos_id: "<eos>"}
        names.update({k: v for k, v in specials.items() if k is not None})
        return {
            "ids": ids,
            "tokens": np.vectorize(lambda i: names.get(int(i), ""), otypes=[object])(ids),
            "values": np.full(ids.shape, np.nan, dtype=np.float32),
            "padding_mask": ids == pad,
            "obs_names": np.asarray(data.adata.obs_names),
        }

    def _describe(self) -> str:
        config = self.module.bert_config
        rank = self.module.rank_value
        return (
            f"Geneformer BERT {config['num_hidden_layers']} layers × {config['hidden_size']}, "
            f"input size {rank.input_size}, {len(rank.known)} genes in its dictionary"
        )


register_checkpoint(
    is_geneformer_checkpoint,
    GeneformerClassifier,
    files="a Geneformer checkpoint (config.json of a BERT, its weights, token_dictionary.pkl "
    "and gene_median_dictionary.pkl)",
)
