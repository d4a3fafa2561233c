"""scGPT checkpoints inside the scvi-tools API: zero-shot embeddings and fine-tuning.

scGPT (Cui et al. 2024) publishes a model as a folder with ``best_model.pt`` (the state dict
of its ``TransformerModel``), ``vocab.json`` (gene symbol → token id) and ``args.json`` (the
architecture). Its cell embedding (``scgpt.tasks.embed_data``) is the ``<cls>`` token's final
hidden state over ``<cls>`` + the cell's expressed genes, each token the sum of a normalised
gene embedding and an embedding of the gene's value bin (:class:`~cellformer.tokenizers.
ScGPTTokenizer`), through a post-LayerNorm transformer; scGPT L2-normalises it. The
checkpoints were trained with flash-attention, whose fused ``Wqkv`` projection is PyTorch's
``in_proj`` of the same layout.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Literal

import anndata as ad
import numpy as np
import torch
import torch.nn.functional as F

from cellformer import _core
from cellformer._errors import ParameterError
from cellformer._utils import seeded
from cellformer.module import ScGPTModule

from ._checkpoint import CheckpointClassifier, gene_ids, head_config, map_to_vocabulary
from .base import register_checkpoint

__all__ = ["ScGPTClassifier", "is_scgpt_checkpoint", "read_scgpt_config"]

logger = logging.getLogger("cellformer")

FILES = ("best_model.pt", "vocab.json", "args.json")
#: scGPT's special tokens, appended to a vocabulary that lacks them (as its embed_data does)
SPECIAL = ("<pad>", "<cls>", "<eoc>")
#: args.json keys (several spellings across scGPT's releases) of each architecture field
ARGS = {
    "d_model": ("embsize", "layer_size", "d_model"),
    "n_heads": ("nheads", "nhead"),
    "d_ff": ("d_hid",),
    "n_layers": ("nlayers",),
    "dropout": ("dropout",),
    "pad_value": ("pad_value",),
    "n_bins": ("n_bins", "n_input_bins"),
    "max_length": ("max_seq_len",),
    "input_emb_style": ("input_emb_style",),
}
PREFIX = "transformer_encoder.layers."


def is_scgpt_checkpoint(path) -> bool:
    """Whether ``path`` is a directory with scGPT's ``best_model.pt``, ``vocab.json``, ``args.json``."""
    path = Path(path)
    return path.is_dir() and all((path / f).is_file() for f in FILES)


def read_scgpt_config(args: dict, state: dict | None = None) -> dict:
    """Return the architecture in an scGPT ``args.json`` in cellformer's keys (``ScGPTModule.DEFAULTS``).

    With the state dict, the sizes are read from the tensors where they are stored (width,
    layers, value table) and the rest from ``args``.
    """
    config = dict(ScGPTModule.DEFAULTS)
    for key, names in ARGS.items():
        for name in names:
            if args.get(name) is not None:
                config[key] = args[name]
                break
    if state is not None:
        config["d_model"] = int(state["encoder.embedding.weight"].shape[1])
        config["n_layers"] = 1 + max(
            int(k[len(PREFIX) :].split(".")[0]) for k in state if k.startswith(PREFIX)
        )
        config["d_ff"] = int(state[f"{PREFIX}0.linear1.weight"].shape[0])
        if "value_encoder.embedding.weight" in state:
            config["input_emb_style"] = "category"
            config["n_value_tokens"] = int(state["value_encoder.embedding.weight"].shape[0])
    if config["input_emb_style"] not in ("continuous", "category"):
        raise _core.InputError(
            f"This scGPT checkpoint embeds values as {config['input_emb_style']!r}; cellformer "
            "reads the 'continuous' and 'category' styles of scGPT's published models."
        )
    return config


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file gets the same message
        raise _core.InputError(f"Cannot read the scGPT weights {str(path)!r}: {err}") from err
    if isinstance(state, dict) and isinstance(state.get("model_state_dict"), dict):
        state = state["model_state_dict"]
    if not isinstance(state, dict) or "encoder.embedding.weight" not in state:
        raise _core.InputError(
            f"{str(path)!r} is not an scGPT state dict (no 'encoder.embedding.weight'): save "
            "the TransformerModel's state_dict() as best_model.pt."
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}  # saved under DDP
    batch_norm = sorted({k.split(".")[0] for k in state if k.startswith(("dsbn.", "bn."))})
    if batch_norm:
        raise _core.InputError(
            f"This scGPT checkpoint normalises per batch ({', '.join(batch_norm)}), which "
            "depends on the batches it was fine-tuned on; cellformer reads the pretrained "
            "checkpoints (whole-human and the organ models) that have none."
        )
    return state


def _read_vocabulary(path: Path) -> dict[str, int]:
    try:
        vocab = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise _core.InputError(f"Cannot read the scGPT vocabulary {str(path)!r}: {err}") from err
    if not isinstance(vocab, dict):
        raise _core.InputError(f"{str(path)!r} must map gene names to token ids (a JSON object).")
    vocab = {str(k): int(v) for k, v in vocab.items()}
    for token in SPECIAL:  # as scGPT's embed_data: missing special tokens are appended
        if token not in vocab:
            vocab[token] = len(vocab)
    return vocab


class ScGPTClassifier(CheckpointClassifier):
    """A cell-type classifier on an scGPT checkpoint.

    Build it with :meth:`from_pretrained` (or :meth:`CellTransformer.from_pretrained
    <cellformer.model.CellTransformer.from_pretrained>`, which detects the format). The cell
    embedding (``get_latent_representation``) is scGPT's: the L2-normalised ``<cls>`` state; a
    new head (linear or Bayesian) classifies the unnormalised state, optionally beside
    cellformer's linear path. Counts or log-normalised values give the same tokens.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    scgpt_config
        The architecture (``read_scgpt_config``).
    token_ids
        Row of each gene of ``adata`` in the module's gene table (``-1``: not in the
        vocabulary).
    trainable_layers
        Fine-tune only the last ``trainable_layers`` transformer layers (and the head);
        ``None``: everything; ``0``: the head only.
    head
        ``"linear"`` or ``"bayesian"``.
    linear_path
        Add cellformer's linear path (a frozen logistic regression on every gene) to the logits.
    class_balance
        As for :class:`~cellformer.model.CellTransformer`.
    seed
        Seed of the new head's initialisation and of the tokenizer's per-cell draws.
    registry, input_kind
        Internal (used by :meth:`load`).
    **head_options
        ``prior_sigma``, ``init_sigma``, ``kl_weight`` of a Bayesian head, as for
        :class:`~cellformer.model.CellTransformer` (:class:`~cellformer.nn.EncoderConfig`
        holds their defaults).
    """

    _module_cls = ScGPTModule
    #: Fine-tuning rate of scGPT's cell-type annotation tutorial (the new head gets
    #: ``module.head_lr``).
    _plan_defaults = {"lr": 1e-4, "weight_decay": 0.0, "warmup_fraction": 0.1}
    _needs_counts = False
    _checkpoint_name = "scGPT"

    def __init__(
        self,
        adata: ad.AnnData | None = None,
        scgpt_config: dict | None = None,
        token_ids: list[int] | None = None,
        trainable_layers: int | None = None,
        head: Literal["linear", "bayesian"] = "linear",
        linear_path: bool = True,
        class_balance: bool = True,
        seed: int | None = 0,
        registry: dict | None = None,
        input_kind: Literal["counts", "lognorm"] | None = None,
        **head_options,
    ):
        network = head_config(head, linear_path, head_options)
        super().__init__(adata, registry=registry, input_kind=input_kind)
        if scgpt_config is None or token_ids is None:
            raise ParameterError(
                "Build an ScGPTClassifier with ScGPTClassifier.from_pretrained(path, adata, "
                "labels_key=...)."
            )
        with seeded(seed):  # the same initialisation for the same seed, caller's state kept
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_labels=self.n_classes,
                scgpt_config=scgpt_config,
                token_ids=np.asarray(token_ids, dtype=np.int64),
                input_kind=self.input_kind_,
                trainable_layers=trainable_layers,
                head=network.head,
                prior_sigma=network.prior_sigma,
                init_sigma=network.init_sigma,
                kl_weight=network.kl_weight,
                class_balance=class_balance,
                linear_path=network.linear_path,
                seed=0 if seed is None else seed,
            )
        input_kind = self.input_kind_
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        adata: ad.AnnData,
        labels_key: str,
        layer: str | None = None,
        gene_id_key: str | None = None,
        gene_mapping: dict | None = None,
        max_length: int | None = None,
        library_size_key: str | None = None,
        **kwargs,
    ) -> ScGPTClassifier:
        """Build a classifier on an scGPT checkpoint directory.

        Parameters
        ----------
        path
            Directory with ``best_model.pt``, ``vocab.json`` and ``args.json`` (e.g. the
            published ``scGPT_human`` folder).
        adata
            Cells (raw counts or log-normalised); labelled cells train the head.
        labels_key
            Column of cell types (``setup_anndata``'s).
        layer
            Layer to read.
        gene_id_key
            ``var`` column with the gene names the vocabulary uses (symbols); default
            ``"feature_name"`` when ``var`` has it (scGPT's ``gene_col``), else ``var_names``.
            Ensembl IDs are mapped to symbols with the pinned gene tables.
        gene_mapping
            ``{gene name: vocabulary name}`` applied first (no automatic mapping then).
        max_length
            Most tokens per cell, ``<cls>`` included; default ``args.json``'s ``max_seq_len``
            (1,200 for the whole-human model, as scGPT's ``embed_data``). Longer cells keep a
            seeded random subset of their genes.
        library_size_key
            ``obs`` column of whole-transcriptome library sizes (for the linear path).
        **kwargs
            :class:`ScGPTClassifier` arguments (``trainable_layers``, ``head``, ``linear_path``
            ...).
        """
        directory = Path(path)
        if not is_scgpt_checkpoint(directory):
            missing = [f for f in FILES if not (directory / f).is_file()]
            raise _core.InputError(
                f"{str(directory)!r} is not an scGPT checkpoint: it lacks "
                f"{', '.join(missing)} (a model folder holds best_model.pt, vocab.json and "
                "args.json)."
            )
        vocab = _read_vocabulary(directory / "vocab.json")
        try:
            args = json.loads((directory / "args.json").read_text())
        except ValueError as err:
            raise _core.InputError(f"Cannot read {str(directory / 'args.json')!r}: {err}") from err
        state = _read_state(directory / "best_model.pt")
        config = read_scgpt_config(args, state)
        if max_length is not None:
            config["max_length"] = int(max_length)
        n_rows = state["encoder.embedding.weight"].shape[0]
        if max(vocab.values()) >= n_rows:
            raise _core.InputError(
                f"vocab.json has token ids up to {max(vocab.values())} but the checkpoint's gene "
                f"table has {n_rows} rows: the vocabulary belongs to another model."
            )
        cls.setup_anndata(
            adata, labels_key=labels_key, layer=layer, library_size_key=library_size_key
        )
        ids = gene_ids(adata, gene_id_key, gene_mapping, default="feature_name")
        if gene_mapping is None:
            ids = map_to_vocabulary(ids, [k for k in vocab if k not in SPECIAL])
        vocab_ids = np.array([vocab.get(g, -1) for g in ids], dtype=np.int64)
        vocab_ids[np.isin(ids, SPECIAL)] = -1
        known = vocab_ids >= 0
        if not known.any():
            raise _core.InputError(
                f"The scGPT vocabulary covers none of the {len(ids)} genes of adata (first: "
                f"{', '.join(map(str, ids[:3]))}; the vocabulary's: "
                f"{', '.join(k for k in list(vocab)[:6] if k not in SPECIAL)}). Pass "
                "gene_id_key='a var column of gene symbols' or gene_mapping={name: symbol}."
            )
        if (~known).any():
            logger.info(
                "%d of %d genes are not in the scGPT vocabulary and are dropped (e.g. %s).",
                int((~known).sum()),
                len(ids),
                ", ".join(map(str, np.asarray(ids)[~known][:5])),
            )
        token_ids = np.full(len(ids), -1, dtype=np.int64)
        token_ids[known] = 2 + np.arange(int(known.sum()))
        model = cls(adata, scgpt_config=config, token_ids=token_ids.tolist(), **kwargs)
        rows = np.concatenate([[vocab["<pad>"], vocab["<cls>"]], vocab_ids[known]])
        _transfer(state, model.module, torch.as_tensor(rows))
        logger.info(
            "Loaded scGPT checkpoint %s: %d layers, width %d, %s values, up to %d tokens; %d of "
            "%d genes in its vocabulary.",
            directory.name,
            config["n_layers"],
            config["d_model"],
            config["input_emb_style"],
            config["max_length"],
            int(known.sum()),
            len(ids),
        )
        return model

    @property
    def _tokens_per_cell(self) -> int:
        return self.module.tokenizer.max_length

    def _checkpoint_inputs(self, values: torch.Tensor, library: torch.Tensor) -> dict:
        return {"values": values}

    def _latent(self, x: torch.Tensor, extra: dict) -> torch.Tensor:
        # scGPT's cell embedding is the L2-normalised <cls> state
        return F.normalize(super()._latent(x, extra), dim=1)

    def tokenize(self, adata: ad.AnnData | None = None, layer: str | None = None) -> dict:
        """Tokens scGPT sees for each cell (see :meth:`CellformerModel.tokenize`).

        ``tokens`` are gene names (``"<cls>"`` first, ``""`` for padding), ``values`` the value
        bins (``pad_value`` for ``<cls>`` and padding), ``ids`` the positions of the tokens in
        the model's gene table (0 padding, 1 ``<cls>``).
        """
        data = self._resolve(adata, layer)
        tokenizer = self.module.tokenizer
        names = np.array(["", "<cls>", *np.asarray(self.adata.var_names)[tokenizer.known]])
        ids, values = [], []
        for start in range(0, data.adata.n_obs, 1024):
            idx = np.arange(start, min(start + 1024, data.adata.n_obs))
            chunk = self._chunk_inputs(data, idx, "cpu")["values"].numpy()
            i, v, _ = tokenizer.encode(chunk)
            ids.append(i)
            values.append(v)
        width = max(i.shape[1] for i in ids)
        ids = np.concatenate([np.pad(i, ((0, 0), (0, width - i.shape[1]))) for i in ids])
        values = np.concatenate(
            [
                np.pad(v, ((0, 0), (0, width - v.shape[1])), constant_values=tokenizer.pad_value)
                for v in values
            ]
        )
        return {
            "ids": ids,
            "tokens": names[ids],
            "values": values,
            "padding_mask": ids == 0,
            "obs_names": np.asarray(data.adata.obs_names),
        }

    def _describe(self) -> str:
        config = self.module.scgpt_config
        return (
            f"scGPT transformer {config['n_layers']} layers × {config['d_model']}, up to "
            f"{self.module.tokenizer.max_length} tokens, {len(self.module.tokenizer.known)} genes "
            "in its vocabulary"
        )


def _transfer(state: dict, module: ScGPTModule, rows: torch.Tensor) -> None:
    """Copy a checkpoint's tensors into the module (the gene table: only ``rows``)."""
    mine = {
        "embed.gene.weight": state["encoder.embedding.weight"][rows],
        "embed.gene_norm.weight": state.get("encoder.enc_norm.weight"),
        "embed.gene_norm.bias": state.get("encoder.enc_norm.bias"),
    }
    value = module.embed.value
    names = (
        ["embedding.weight", "enc_norm.weight", "enc_norm.bias"]
        if value.style == "category"
        else [f"{p}.{t}" for p in ("linear1", "linear2", "norm") for t in ("weight", "bias")]
    )
    for name in names:
        mine[f"embed.value.{name.replace('enc_norm', 'norm')}"] = state.get(f"value_encoder.{name}")
    for key in module.encoder.state_dict():
        theirs = f"transformer_encoder.{key}"
        flash = theirs.replace("self_attn.in_proj_", "self_attn.Wqkv.")
        mine[f"encoder.{key}"] = state.get(theirs, state.get(flash))
    missing = sorted(k for k, v in mine.items() if v is None)
    if missing:
        raise _core.InputError(
            f"The scGPT checkpoint lacks {len(missing)} tensors its args.json implies (e.g. "
            f"{', '.join(missing[:3])}): is best_model.pt from another model than args.json?"
        )
    result = module.load_state_dict(mine, strict=False)
    if result.unexpected_keys:  # pragma: no cover - the names are built from the module
        raise RuntimeError(f"Unexpected tensors: {result.unexpected_keys}")


register_checkpoint(
    is_scgpt_checkpoint,
    ScGPTClassifier,
    files="an scGPT folder (best_model.pt, vocab.json, args.json)",
)
