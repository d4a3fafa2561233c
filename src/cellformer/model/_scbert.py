"""scBERT checkpoints (a Performer language model over expression bins) as a CellTransformer.

scBERT (Yang et al. 2022) pretrains ``PerformerLM(num_tokens=7, dim=200, depth=6, heads=10,
max_seq_len=16907, g2v_position_emb=True)`` on PanglaoDB: a cell is the fixed list of 16,906
genes plus one extra position, each token the sum of its expression bin's embedding
(``floor(log2(1 + normalised count))`` capped at 5; 6 is ``<mask>``) and its gene's gene2vec
vector (the "positional" table). The checkpoint (``panglao_pretrain.pth``) holds that state
dict, under ``model_state_dict`` or at the top level.

The same computation in cellformer's terms: the ``"scbert"`` tokenizer (every gene a token in
fixed order, ``log_bins`` with base 2, no embedding LayerNorm), gene identity vectors = the
gene2vec rows, the extra position as ``<cls>`` (attention without positions does not depend
on where a token sits), Performer attention with performer-pytorch's feature ``eps`` and the
checkpoint's random features, pre-LN blocks with a GELU FFN and a LayerNorm on every token at
the end; the classifier is cellformer's gene-wise readout, new.

One difference from scBERT's preprocessing, on purpose: counts are normalised by each cell's
total over all of its genes (as everywhere in cellformer, for training and query cells alike),
where scBERT divides by the total over its 16,906 genes after reindexing. The two agree when
the data hold only those genes.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from pathlib import Path

import anndata as ad
import torch

from cellformer import _core
from cellformer._errors import ParameterError, UnsafeFileError
from cellformer.tokenizers import N_SPECIAL, SPECIAL_TOKENS

from ._pretrain import PretrainedEncoder

__all__ = ["is_scbert_file", "load_scbert_state", "scbert_classifier", "scbert_from_file"]

logger = logging.getLogger("cellformer")

PREFIX = "performer.net.layers."
CLS_ID = SPECIAL_TOKENS.index("<cls>")
#: performer-pytorch's default feature epsilon, added inside its softmax kernel
PERFORMER_EPS = 1e-4


def load_scbert_state(path, trust: bool = False) -> dict[str, torch.Tensor] | None:
    """Return the Performer state dict in the file ``path``, or ``None`` if it holds none.

    Read with ``torch.load(weights_only=True)`` (tensors and containers, no code); a file that
    needs more is an :class:`~cellformer.UnsafeFileError` unless ``trust=True``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    with path.open("rb") as f:
        pickled = f.read(1) == b"\x80"  # a pickle's protocol opcode (torch's legacy format)
    if not (pickled or zipfile.is_zipfile(path)):  # neither of torch's formats: not a checkpoint
        return None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as err:
        if "Weights only load failed" not in str(err):
            return None
        raise UnsafeFileError(
            f"{str(path)!r} holds Python objects besides tensors, which only its pickle can "
            "build (reading it could run code). Pass trust=True only if you trust its source."
        ) from err
    except Exception:  # noqa: BLE001 - not a torch file: not an scBERT checkpoint
        return None
    if isinstance(payload, dict) and isinstance(payload.get("model_state_dict"), dict):
        payload = payload["model_state_dict"]
    if not isinstance(payload, dict):
        return None
    payload = {k.removeprefix("module."): v for k, v in payload.items()}  # saved under DDP
    return payload if f"{PREFIX}0.0.fn.to_q.weight" in payload else None


def _architecture(state: dict) -> dict:
    depth = 1 + max(int(k[len(PREFIX) :].split(".")[0]) for k in state if k.startswith(PREFIX))
    projection = state[f"{PREFIX}0.0.fn.fast_attention.projection_matrix"]
    inner, dim = state[f"{PREFIX}0.0.fn.to_q.weight"].shape
    n_features, head_dim = projection.shape
    return {
        "d_model": int(dim),
        "n_layers": depth,
        "n_heads": int(inner) // int(head_dim),
        "head_dim": int(head_dim),
        "d_ff": int(state[f"{PREFIX}0.1.fn.fn.w1.weight"].shape[0]),
        "n_features": int(n_features),
        "n_tokens": int(state["token_emb.weight"].shape[0]),
        "n_positions": int(state["pos_emb.emb.weight"].shape[0]),
    }


def _transfer(state: dict, module, arch: dict) -> None:
    """Copy the Performer's weights into a TransformerModule of the same architecture."""
    n_genes = arch["n_positions"] - 1
    with torch.no_grad():
        positions = state["pos_emb.emb.weight"]
        bins = state["token_emb.weight"]
        gene = module.embed.gene.embedding.weight
        gene[N_SPECIAL : N_SPECIAL + n_genes] = positions[:n_genes]
        # the extra last position holds bin 0; <cls> gets no expression embedding
        gene[CLS_ID] = positions[n_genes] + bins[0]
        module.embed.expression.embedding.weight.copy_(bins)
        for i, block in enumerate(module.encoder.layers):
            attn, ff = f"{PREFIX}{i}.0.", f"{PREFIX}{i}.1."
            block.norm1.weight.copy_(state[attn + "norm.weight"])
            block.norm1.bias.copy_(state[attn + "norm.bias"])
            qkv = [state[f"{attn}fn.to_{x}.weight"] for x in "qkv"]
            block.attn.qkv.weight.copy_(torch.cat(qkv))
            qkv_bias = [state.get(f"{attn}fn.to_{x}.bias") for x in "qkv"]
            if any(b is None for b in qkv_bias):  # scBERT's projections have no bias
                block.attn.qkv.bias.zero_()
            else:
                block.attn.qkv.bias.copy_(torch.cat(qkv_bias))
            block.attn.out.weight.copy_(state[attn + "fn.to_out.weight"])
            bias = state.get(attn + "fn.to_out.bias")
            if bias is None:  # performer-pytorch's attn_out_bias=False
                block.attn.out.bias.zero_()
            else:
                block.attn.out.bias.copy_(bias)
            block.attn.kernel.projection.copy_(state[attn + "fn.fast_attention.projection_matrix"])
            block.norm2.weight.copy_(state[ff + "norm.weight"])
            block.norm2.bias.copy_(state[ff + "norm.bias"])
            block.ff[0].weight.copy_(state[ff + "fn.fn.w1.weight"])
            block.ff[0].bias.copy_(state[ff + "fn.fn.w1.bias"])
            block.ff[3].weight.copy_(state[ff + "fn.fn.w2.weight"])
            block.ff[3].bias.copy_(state[ff + "fn.fn.w2.bias"])
        module.encoder.norm.weight.copy_(state["norm.weight"])
        module.encoder.norm.bias.copy_(state["norm.bias"])


def is_scbert_file(path) -> bool:
    """Whether ``path`` may be an scBERT checkpoint: a file (what it holds is read on building)."""
    return isinstance(path, (str, Path)) and Path(path).is_file()


def scbert_from_file(
    cls, path, adata, labels_key, *, layer=None, trainable_layers=None, layerwise_lr_decay=None,
    trust=False, **kwargs,
):  # fmt: skip
    """Build ``cls`` on the scBERT checkpoint file ``path``; ``None`` if it holds none."""
    state = load_scbert_state(path, trust)
    if state is None:
        return None
    return scbert_classifier(
        cls, state, Path(path).name, adata, labels_key, genes=kwargs.pop("genes", None),
        layer=layer, trainable_layers=trainable_layers, layerwise_lr_decay=layerwise_lr_decay,
        **kwargs,
    )  # fmt: skip


def scbert_classifier(
    cls,
    state: dict,
    name: str,
    adata: ad.AnnData,
    labels_key: str,
    genes,
    layer: str | None = None,
    trainable_layers: int | None = None,
    layerwise_lr_decay: float | None = None,
    **kwargs,
):
    """Build a CellTransformer on an scBERT state dict (from :func:`load_scbert_state`).

    ``name`` is the checkpoint's file name, for the log.
    """
    arch = _architecture(state)
    if genes is None:
        raise _core.InputError(
            "An scBERT checkpoint needs its gene list, in the order of its gene2vec table: pass "
            "genes=[...] (scBERT's preprocessing reference, 16,906 genes for "
            "panglao_pretrain.pth)."
        )
    genes = [str(g) for g in genes]
    if len(genes) != arch["n_positions"] - 1:
        raise _core.InputError(
            f"The checkpoint has {arch['n_positions']} positions, so {arch['n_positions'] - 1} "
            f"genes (the last position is scBERT's extra token), but genes has {len(genes)}."
        )
    fixed = sorted(set(kwargs) & {"tokenizer", "d_model", "n_layers", "n_heads", "d_ff"})
    if fixed:
        raise ParameterError(f"{fixed} are fixed by the scBERT checkpoint; leave them out.")
    aligned = PretrainedEncoder.align_to(genes, adata, layer)
    cls.setup_anndata(aligned, labels_key=labels_key)
    kwargs.setdefault("pooling", "genes")
    kwargs.setdefault("linear_path", True)
    model = cls(
        aligned,
        tokenizer={
            "preset": "scbert",
            "n_bins": arch["n_tokens"] - 1,
            "bin_log_base": 2.0,
            "cls_token": True,
            "embedding_norm": False,
        },
        d_model=arch["d_model"],
        n_layers=arch["n_layers"],
        n_heads=arch["n_heads"],
        head_dim=arch["head_dim"],
        d_ff=arch["d_ff"],
        attention="performer",
        attention_options={
            "n_features": arch["n_features"],
            "eps": PERFORMER_EPS,
            "redraw_interval": 0,
        },
        token_norm=True,
        **kwargs,
    )
    _transfer(state, model.module, arch)
    model._keep_tokenizer_statistics = True
    model._freeze_pretrained(trainable_layers, layerwise_lr_decay)
    logger.info(
        "Loaded scBERT checkpoint %s: %d layers, d_model %d, %d heads × %d, %d genes.",
        name,
        arch["n_layers"],
        arch["d_model"],
        arch["n_heads"],
        arch["head_dim"],
        len(genes),
    )
    return model
