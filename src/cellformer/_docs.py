"""Parameter descriptions shared by several docstrings (one source, as scvi-tools does)."""

from __future__ import annotations

__all__ = ["ENCODER_PARAMS", "share_docs"]

#: The fields of :class:`~cellformer.nn.EncoderConfig`, as :class:`~cellformer.model.CellTransformer`
#: takes them (numpydoc entries).
ENCODER_PARAMS = """\
d_model
    Token width.
n_layers
    Encoder blocks.
n_heads
    Attention heads.
d_ff
    FFN hidden units (default ``2 * d_model``).
dropout
    Dropout on token embeddings, residual branches, FFN and before the head.
attention_dropout
    Dropout on attention probabilities (slow on CPU: it disables the fused kernel).
attention
    Attention kernel: ``"dense"`` (SDPA, quadratic in tokens), ``"knn"`` (each gene token
    attends to its neighbours in a gene–gene kNN graph built on the training cells, plus
    ``<cls>``; linear in tokens) or ``"performer"`` (FAVOR+ linear attention). Use ``"knn"`` or
    ``"performer"`` for thousands of tokens per cell (e.g. the ``"scbert"`` preset).
attention_options
    Kernel options: ``{"k": 8, "max_degree": 24}`` for ``"knn"``; ``{"n_features": 128,
    "redraw_interval": 1000}`` for ``"performer"``.
token_dropout
    Share of each cell's gene tokens hidden at random during training (augmentation).
pooling
    ``"mean"`` (over gene tokens), ``"cls"``, or ``"genes"`` (scBERT's gene-wise readout: one
    number per gene token, then a linear map from genes). ``None``: ``"genes"`` when every gene
    is a token (``drop_zeros=False``, e.g. the ``"scbert"`` preset), where a mean would be
    dominated by the constant zero tokens; ``"mean"`` otherwise.
head
    ``"linear"`` or ``"bayesian"``: a mean-field Gaussian classifier
    (:class:`~cellformer.nn.BayesianLinear`) trained with a KL term; predict with
    ``mc_samples`` to average its samples.
bayesian_ffn
    Make the encoder's FFN layers Bayesian too.
prior_sigma
    Prior standard deviation of the Bayesian layers.
init_sigma
    Initial posterior standard deviation of the Bayesian head's weights. Training moves it
    slowly: from a small value the posterior stays nearly a point and the head is no better
    calibrated than softmax; from 0.1 it widens to what the data allow
    (``benchmarks/uncertainty.py`` measures it). Bayesian FFN layers start at 1e-3 (noise
    there is amplified through the encoder).
kl_weight
    Weight of the KL term (1 = the evidence lower bound).
layer_sizes
    ``[(n_heads, d_ff), ...]`` per block: set by :meth:`prune` so that a pruned model
    saves and loads with its smaller tensors.
head_dim
    Width of an attention head (default ``d_model // n_heads``).
token_norm
    LayerNorm each token after the last block (scBERT's layout) instead of the pooled vector
    only.
linear_path
    Add a linear path: logits = linear(standardised log expression of every gene) +
    head(pooled tokens). At :meth:`train` the linear part is fit first on the training split
    (a :class:`~cellformer.model.LinearClassifier`, trained as that baseline is, whose
    weights and scaler are copied) and frozen; the transformer head starts at
    zero, so training begins at the linear model and the transformer learns what it misses
    (an auxiliary classifier on the pooled output trains the encoder meanwhile); then the
    linear part is refit on every labelled cell, as LinearClassifier uses them. The latent
    representation is the encoder's pooled output either way. ``False``: tokens → encoder →
    pooled → head only.
"""


def share_docs(**blocks: str):
    """Replace a docstring line ``{name}`` by the block ``name``, at that line's indentation."""

    def decorate(obj):
        lines = []
        for line in (obj.__doc__ or "").splitlines():
            key = line.strip()
            if key.startswith("{") and key.endswith("}") and key[1:-1] in blocks:
                indent = line[: len(line) - len(line.lstrip())]
                lines.extend(
                    indent + text if text else text for text in blocks[key[1:-1]].splitlines()
                )
            else:
                lines.append(line)
        obj.__doc__ = "\n".join(lines)
        return obj

    return decorate
