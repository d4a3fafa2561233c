"""Extending cellformer as docs/contributing.md says: a new part is one class and one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

import cellformer as cf
from cellformer.nn import ATTENTION, EncoderConfig, get_encoder_config, register_attention


class MeanAttention(nn.Module):
    """A toy kernel: every token gets the mean of the values of the cell's real tokens."""

    def __init__(self, head_dim: int, dropout: float = 0.0, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, q, k, v, padding_mask, neighbours=None):
        keep = (~padding_mask).to(v.dtype)[:, None, :, None]  # (batch, 1, tokens, 1)
        mean = (v * keep).sum(2, keepdim=True) / keep.sum(2, keepdim=True).clamp_min(1)
        return self.scale * mean.expand_as(v)


@pytest.fixture
def toy_kernel():
    register_attention("toy-mean", MeanAttention)
    yield "toy-mean"
    ATTENTION.pop("toy-mean", None)


def test_a_registered_kernel_trains_predicts_saves_and_loads(pbmc68k, toy_kernel, tmp_path):
    adata = pbmc68k[:300, :80].copy()
    cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = cf.model.CellTransformer(
        adata, d_model=16, n_heads=2, attention=toy_kernel, attention_options={"scale": 0.5}
    )
    kernel = model.module.encoder.layers[0].attn.kernel
    assert isinstance(kernel, MeanAttention) and kernel.scale == 0.5
    model.train(max_epochs=2, enable_progress_bar=False)
    probs = model.predict(adata, soft=True, key_prefix=None)
    assert probs.shape == (300, model.n_classes)
    model.save(tmp_path / "m")
    loaded = cf.model.CellTransformer.load(tmp_path / "m")
    assert isinstance(loaded.module.encoder.layers[0].attn.kernel, MeanAttention)
    np.testing.assert_allclose(
        loaded.predict(adata, soft=True, key_prefix=None).to_numpy(), probs.to_numpy(), atol=1e-5
    )


def test_kernel_registry_errors(toy_kernel):
    with pytest.raises(cf.ParameterError, match="already registered"):
        register_attention(toy_kernel, cf.nn.DenseAttention)
    with pytest.raises(cf.ParameterError, match="torch.nn.Module"):
        register_attention("not-a-module", object)
    with pytest.raises(cf.ParameterError, match="register_attention"):
        EncoderConfig(attention="no-such-kernel")
    register_attention(toy_kernel, MeanAttention)  # the same class again: nothing changes


def test_graph_kernels_get_a_gene_graph(pbmc68k, toy_kernel):
    class GraphMean(MeanAttention):
        needs_gene_graph = True

    register_attention("toy-graph", GraphMean)
    try:
        adata = pbmc68k[:100, :40].copy()
        cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
        plain = cf.model.CellTransformer(adata, d_model=16, n_heads=2, attention=toy_kernel)
        graph = cf.model.CellTransformer(
            adata, d_model=16, n_heads=2, attention="toy-graph", attention_options={"k": 4}
        )
        assert plain.module.gene_graph is None
        assert graph.module.gene_graph is not None and graph.module.knn_k == 4
    finally:
        ATTENTION.pop("toy-graph", None)


def test_encoder_config_one_place_for_defaults(pbmc68k):
    adata = pbmc68k[:100, :40].copy()
    cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
    by_keywords = cf.model.CellTransformer(adata, d_model=16, n_heads=2, n_layers=2)
    by_config = cf.model.CellTransformer(
        adata, encoder=EncoderConfig(d_model=16, n_heads=2, n_layers=2)
    )
    by_dict = cf.model.CellTransformer(
        adata, encoder={"preset": "small", "d_model": 16, "n_layers": 2}
    )
    assert by_keywords.encoder_config == by_config.encoder_config == by_dict.encoder_config
    pairs = zip(
        by_keywords.module.state_dict().values(),
        by_config.module.state_dict().values(),
        strict=True,
    )
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)  # same seed, same net
    # the module and pretrain() read the same defaults as the model
    module = cf.module.TransformerModule(40, 3, adata.var_names)
    assert module.config.token_dropout == EncoderConfig().token_dropout
    assert module.config.linear_path == EncoderConfig().linear_path
    assert get_encoder_config("small").d_model == 32
    with pytest.raises(cf.ParameterError, match="Unknown encoder option"):
        cf.model.CellTransformer(adata, d_modle=16)
    with pytest.raises(cf.ParameterError, match="Unknown encoder preset"):
        cf.model.CellTransformer(adata, encoder="huge")
    with pytest.raises(cf.ParameterError, match="d_model"):
        cf.model.CellTransformer(adata, d_model=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n_heads", 0, "whole number of at least 1"),
        ("d_ff", 2.5, "whole number or None, got 2.5"),
        ("n_layers", True, "whole number, got True"),
        ("dropout", 1.0, r"number in \[0, 1\)"),
        ("token_dropout", None, r"number \(not NaN\), got None"),
        ("dropout", float("nan"), r"number \(not NaN\), got nan"),
        ("kl_weight", -1, "non-negative number"),
    ],
)
def test_encoder_config_names_the_bad_field(field, value, message):
    with pytest.raises(cf.ParameterError, match=f"{field} must be a {message}"):
        EncoderConfig(**{field: value})


def test_encoder_config_keeps_numpy_integers_as_plain_ones():
    config = EncoderConfig(d_model=np.int64(32), n_heads=np.int32(2))
    assert type(config.d_model) is int and type(config.n_heads) is int
    json.dumps(config.to_dict())  # saved with the model


class SqrtValue(cf.tokenizers.ExpressionPart):
    """A toy expression encoder: one learned vector scaled by the square root of the value."""

    has_value = True

    def build(self, module, config, d_model):
        module.direction = nn.Parameter(torch.randn(d_model) / d_model**0.5)

    def embed(self, module, tokens):
        return tokens.values.clamp_min(0).sqrt().unsqueeze(-1) * module.direction


@pytest.fixture
def toy_expression():
    cf.tokenizers.register_expression("toy-sqrt", SqrtValue)
    yield "toy-sqrt"
    cf.tokenizers.EXPRESSION.pop("toy-sqrt", None)


def test_a_registered_expression_encoder_trains_saves_loads_and_pretrains(
    pbmc68k, toy_expression, tmp_path
):
    adata = pbmc68k[:300, :80].copy()
    cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
    tokenizer = {"preset": "default", "expression": toy_expression}
    model = cf.model.CellTransformer(adata, tokenizer=tokenizer, d_model=16, n_heads=2)
    assert isinstance(model.module.embed.expression.part, SqrtValue)
    assert "embed.expression.direction" in model.module.state_dict()
    model.train(max_epochs=2, enable_progress_bar=False)
    probs = model.predict(adata, soft=True, key_prefix=None)
    model.save(tmp_path / "m")
    loaded = cf.model.CellTransformer.load(tmp_path / "m")
    np.testing.assert_allclose(
        loaded.predict(adata, soft=True, key_prefix=None).to_numpy(), probs.to_numpy(), atol=1e-5
    )
    # not maskable: pretraining predicts the hidden gene, and refuses to hide the value
    encoder = cf.model.pretrain(
        adata, tokenizer=tokenizer, d_model=16, n_heads=2, max_epochs=1, enable_progress_bar=False
    )
    assert encoder.architecture["d_model"] == 16
    with pytest.raises(cf.ParameterError, match="no value to hide"):
        cf.model.pretrain(adata, tokenizer=tokenizer, d_model=16, n_heads=2, target="expression")
    with pytest.raises(cf.ParameterError, match="already registered"):
        cf.tokenizers.register_expression(toy_expression, cf.tokenizers.ExpressionPart)
    with pytest.raises(cf.ParameterError, match="Unknown expression"):
        cf.tokenizers.TokenizerConfig(expression="no-such-encoder")


def test_a_registered_token_order_orders_tokens_and_trains(pbmc68k, tmp_path):
    """Lowest expression first: the reverse of the built-in "expression" order."""
    order = cf.tokenizers.TokenOrder(lambda tokenizer, values, genes, generator: 1 / (1 + values))
    cf.tokenizers.register_order("toy-ascending", order)
    try:
        x = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 4.0, 0.0]])
        tokens = {}
        for name in ("expression", "toy-ascending"):
            config = cf.tokenizers.TokenizerConfig(order=name, expression="none", cls_token=False)
            tokenizer = cf.tokenizers.Tokenizer(["g0", "g1", "g2", "g3"], config)
            ids = tokenizer(x).ids - cf.tokenizers.N_SPECIAL
            tokens[name] = [[int(i) for i in row if i >= 0] for row in ids]
        assert tokens["expression"] == [[1, 3, 2], [0, 2]]
        assert tokens["toy-ascending"] == [[2, 3, 1], [2, 0]]
        assert cf.tokenizers.TokenizerConfig(order="toy-ascending").use_positions
        adata = pbmc68k[:200, :60].copy()
        cf.model.CellTransformer.setup_anndata(adata, labels_key="cell_type")
        tokenizer = {"preset": "default", "order": "toy-ascending"}
        model = cf.model.CellTransformer(adata, tokenizer=tokenizer, d_model=16, n_heads=2)
        model.train(max_epochs=1, enable_progress_bar=False)
        model.save(tmp_path / "m")
        probs = model.predict(adata, soft=True, key_prefix=None).to_numpy()
        loaded = cf.model.CellTransformer.load(tmp_path / "m")
        np.testing.assert_allclose(
            loaded.predict(adata, soft=True, key_prefix=None).to_numpy(), probs, atol=1e-5
        )
        with pytest.raises(cf.ParameterError, match="already registered"):
            cf.tokenizers.register_order("toy-ascending", order)
    finally:
        cf.tokenizers.ORDER.pop("toy-ascending", None)
    with pytest.raises(cf.ParameterError, match="Unknown order='toy-ascending'"):
        cf.tokenizers.TokenizerConfig(order="toy-ascending")
