"""Starting a CellTransformer from a pretrained encoder (``pretrain``/``from_pretrained``).

``from_pretrained`` also builds the models of the published checkpoints registered with
:func:`~cellformer.model.base.register_checkpoint` (Geneformer, scGPT). The functions here are
:class:`~cellformer.model.CellTransformer`'s methods, kept in their own file (the class body
binds them; no mixin class).
"""

from __future__ import annotations

import logging
from pathlib import Path

import anndata as ad

from cellformer import _core
from cellformer._errors import ParameterError
from cellformer._utils import freeze_all_but_last

from ._pretrain import PretrainedEncoder, pretrain
from .base import CellformerModel, checkpoint_kinds

__all__ = ["from_pretrained", "pretrain_method"]

logger = logging.getLogger("cellformer")


@staticmethod
def pretrain_method(adata: ad.AnnData, **kwargs) -> PretrainedEncoder:
    """Masked-expression pretraining on unlabelled cells; see :func:`cellformer.model.pretrain`.

    Examples
    --------
    >>> encoder = cf.model.CellTransformer.pretrain(unlabelled)
    >>> encoder.save("encoder/")
    >>> model = cf.model.CellTransformer.from_pretrained("encoder/", adata, "cell_type")
    >>> model.train()
    """
    return pretrain(adata, **kwargs)


@classmethod
def from_pretrained(
    cls,
    encoder: str | Path | PretrainedEncoder,
    adata: ad.AnnData,
    labels_key: str,
    layer: str | None = None,
    trainable_layers: int | None = None,
    layerwise_lr_decay: float | None = None,
    trust: bool = False,
    **kwargs,
) -> CellformerModel:
    """Build a classifier whose encoder starts from a pretrained one.

    ``adata`` is aligned to the encoder's genes (log-normalised; missing genes are zero,
    coverage is logged) and set up with ``labels_key``; the tokenizer keeps the pretrained
    statistics, so the encoder sees its inputs as in pretraining. The classification head is
    new.

    Parameters
    ----------
    encoder
        A :class:`PretrainedEncoder` or the directory it was saved to; or a Geneformer
        checkpoint directory (Hugging Face BERT ``config.json`` + weights + its token and
        gene median dictionaries), which gives a
        :class:`~cellformer.model.GeneformerClassifier` (see its ``from_pretrained`` for
        the arguments it takes); or an scGPT model folder (``best_model.pt``,
        ``vocab.json``, ``args.json``), which gives a
        :class:`~cellformer.model.ScGPTClassifier`; or an scBERT checkpoint file (``panglao_pretrain.pth``:
        performer-pytorch's ``PerformerLM`` state dict), loaded into this class's Performer
        with the ``"scbert"`` tokenizer; pass its gene list as ``genes=[...]``.
    adata
        Labelled cells (unlabelled ones may be marked as in ``setup_anndata``).
    labels_key
        Column of cell types.
    layer
        Layer of ``adata`` to read.
    trainable_layers
        Fine-tune only the last ``trainable_layers`` encoder blocks (and the head); the
        embeddings and earlier blocks stay frozen, as scBERT's fine-tuning does. ``None``:
        everything is trained; ``0``: the head only.
    layerwise_lr_decay
        Layer-wise learning rates: the head gets ``lr``, the last block ``lr * decay``, the
        one before ``lr * decay²``, ..., the embeddings the smallest.
    trust
        Read a file that holds Python objects besides tensors (an encoder saved before
        cellformer 0.1.0, an scBERT checkpoint with extra objects) as the pickle it is,
        which can run code: only for files you trust. Without it such a file is refused.
    **kwargs
        Other :class:`CellTransformer` arguments (``head``, ``pooling``, ``token_dropout`` ...);
        the architecture is the encoder's.

    Returns
    -------
    The model, ready for :meth:`train`; ``model.adata`` is the aligned copy.
    """
    if not isinstance(encoder, PretrainedEncoder) and not PretrainedEncoder.is_saved(encoder):
        for kind in checkpoint_kinds():
            if not kind.detect(encoder):
                continue
            if kind.build is not None:
                model = kind.build(
                    cls, encoder, adata, labels_key, layer=layer,
                    trainable_layers=trainable_layers, layerwise_lr_decay=layerwise_lr_decay,
                    trust=trust, **kwargs,
                )  # fmt: skip
                if model is not None:
                    return model
                continue
            if layerwise_lr_decay is not None:
                raise ParameterError(
                    f"layerwise_lr_decay is not available for {kind.cls.__name__}."
                )
            return kind.cls.from_pretrained(
                encoder, adata, labels_key, layer=layer, trainable_layers=trainable_layers, **kwargs
            )
        known = [
            f"a directory with {PretrainedEncoder.JSON} (CellTransformer.pretrain(...).save())"
        ]
        known += [kind.files for kind in checkpoint_kinds()]
        raise _core.InputError(
            f"{str(encoder)!r} is no pretrained model cellformer knows: expected "
            f"{', '.join(known[:-1])} or {known[-1]}."
        )
    if not isinstance(encoder, PretrainedEncoder):
        encoder = PretrainedEncoder.load(encoder, trust=trust)
    clash = sorted(set(kwargs) & {*encoder.architecture, "tokenizer"})
    if clash:
        raise ParameterError(f"{clash} are fixed by the pretrained encoder; leave them out.")
    aligned = encoder.align(adata, layer)
    cls.setup_anndata(aligned, labels_key=labels_key)
    model = cls(aligned, tokenizer=encoder.tokenizer, **encoder.architecture, **kwargs)
    weights = encoder.transferable(model.module)
    model.module.load_state_dict(weights, strict=False)
    model._keep_tokenizer_statistics = True
    model._freeze_pretrained(trainable_layers, layerwise_lr_decay)
    logger.info("Loaded %d pretrained tensors (%s); the head is new.", len(weights), encoder)
    return model


def _freeze_pretrained(
    self, trainable_layers: int | None, layerwise_lr_decay: float | None = None
) -> None:
    """Freeze the embeddings and all but the last ``trainable_layers`` blocks; set lr decay."""
    freeze_all_but_last(self.module.embed, self.module.encoder.layers, trainable_layers)
    if layerwise_lr_decay is not None:
        if not 0 < layerwise_lr_decay <= 1:
            raise ParameterError(f"layerwise_lr_decay must be in (0, 1], got {layerwise_lr_decay}.")
        self.module.lr_decay = layerwise_lr_decay
