"""Attention and encoder blocks: head reshapes, padding semantics."""

import torch
from torch import nn

from cellformer.nn import MultiHeadAttention, TransformerEncoder


def test_multihead_attention_matches_torch_reference():
    torch.manual_seed(0)
    d, h = 16, 4
    ours = MultiHeadAttention(d, h)
    ref = nn.MultiheadAttention(d, h, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv.weight)
        ref.in_proj_bias.copy_(ours.qkv.bias)
        ref.out_proj.weight.copy_(ours.out.weight)
        ref.out_proj.bias.copy_(ours.out.bias)
    x = torch.randn(3, 7, d)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    pad[2, 3:] = True
    expected, _ = ref(x, x, x, key_padding_mask=pad)
    torch.testing.assert_close(ours(x, pad), expected, atol=1e-5, rtol=1e-5)


def test_heads_are_separate():
    """Changing the values of one head's slice only changes that head's output slice."""
    torch.manual_seed(0)
    d, h = 8, 2
    attn = MultiHeadAttention(d, h)
    q = k = v = torch.randn(1, 2, 5, 4)
    out = attn.kernel(q, k, v, None)
    v2 = v.clone()
    v2[:, 1] += 1.0
    out2 = attn.kernel(q, k, v2, None)
    torch.testing.assert_close(out[:, 0], out2[:, 0])
    x = torch.arange(2 * 5 * d).float().view(2, 5, d)
    torch.testing.assert_close(attn.merge_heads(attn.split_heads(x)), x)
    assert torch.equal(attn.split_heads(x)[0, 1, 0], x[0, 0, 4:])  # head 1 = channels 4..7


def test_padding_does_not_change_real_tokens():
    torch.manual_seed(0)
    enc = TransformerEncoder(d_model=16, n_heads=4, n_layers=2, d_ff=32, dropout=0.0).eval()
    x = torch.randn(2, 6, 16)
    no_pad = torch.zeros(2, 6, dtype=torch.bool)
    padded = torch.cat([x, torch.randn(2, 4, 16) * 100], dim=1)  # junk in the padding
    pad = torch.cat([no_pad, torch.ones(2, 4, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(enc(padded, pad)[:, :6], enc(x, no_pad), atol=1e-5, rtol=1e-5)


def test_dropout_is_independent_bernoulli_with_inverted_scaling():
    from cellformer.nn import Dropout
    from cellformer.nn._dropout import bernoulli_keep

    torch.manual_seed(0)
    keep = bernoulli_keep((400, 1000), 0.1)
    assert keep.shape == (400, 1000) and keep.dtype == torch.bool
    # keep rate 0.9 (4e5 draws: sd 5e-4); the 4 quarters of each 64-bit draw are all uniform
    # (the int64 draw's top bit is always 0, which would bias every 4th element if unmasked)
    flat = keep.flatten()
    for quarter in range(4):
        assert abs(flat[quarter::4].float().mean().item() - 0.9) < 0.004
    # neighbouring elements are independent: P(both kept) = 0.81
    assert abs((flat[:-1] & flat[1:]).float().mean().item() - 0.81) < 0.004
    # seeded by the global generator
    torch.manual_seed(1)
    a = bernoulli_keep((50, 7), 0.3)
    torch.manual_seed(1)
    assert torch.equal(a, bernoulli_keep((50, 7), 0.3))

    drop = Dropout(0.25)
    x = torch.rand(200, 300) + 0.5
    x.requires_grad_(True)
    y = drop(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], x[kept] / 0.75)
    y.sum().backward()  # the gradient passes the kept elements, scaled the same way
    assert torch.allclose(x.grad, kept.float() / 0.75)
    drop.eval()
    assert drop(x) is x
    assert isinstance(drop, torch.nn.Dropout)  # Monte-Carlo dropout finds it
    assert torch.equal(Dropout(1.0)(x), torch.zeros_like(x))
