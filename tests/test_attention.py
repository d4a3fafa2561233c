"""Dense, kNN gene-graph and Performer attention: same interface, same masking, exactness."""

import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from cellformer import pp
from cellformer.nn import (
    GeneGraph,
    MultiHeadAttention,
    PerformerAttention,
    TransformerEncoder,
)
from cellformer.nn._neighbours import neighbour_attention

KERNELS = ["dense", "knn", "performer"]


def full_graph(n_genes: int) -> GeneGraph:
    """Every gene is every gene's neighbour (self first)."""
    rows = [[g, *[j for j in range(n_genes) if j != g]] for g in range(n_genes)]
    return GeneGraph(n_genes, n_genes).set(torch.tensor(rows))


def cells(n_cells=3, n_genes=12, length=8, seed=0):
    """A ``<cls>`` token then ``length`` distinct genes per cell, the later ones padded in some."""
    g = torch.Generator().manual_seed(seed)
    genes = torch.stack([torch.randperm(n_genes, generator=g)[:length] for _ in range(n_cells)])
    genes = torch.cat([torch.full((n_cells, 1), -1), genes], dim=1)
    pad = torch.zeros(n_cells, length + 1, dtype=torch.bool)
    pad[1, 6:] = True
    pad[2, 3:] = True
    return genes, pad


def test_knn_with_all_genes_as_neighbours_equals_dense():
    """k ≥ tokens: kNN attention is dense attention, forward and gradients (to 1e-5)."""
    torch.manual_seed(0)
    n_genes, d = 12, 16
    genes, pad = cells(n_genes=n_genes)
    neighbours = full_graph(n_genes).token_neighbours(genes, pad, n_global=1)
    dense = MultiHeadAttention(d, 4)
    knn = MultiHeadAttention(d, 4, attention="knn")
    knn.load_state_dict(dense.state_dict())
    x = torch.randn(*genes.shape, d, dtype=torch.float64, requires_grad=True)
    dense.double(), knn.double()
    real = ~pad
    out_dense, out_knn = dense(x, pad), knn(x, pad, neighbours)
    torch.testing.assert_close(out_knn[real], out_dense[real], atol=1e-5, rtol=1e-5)
    (grad_dense,) = torch.autograd.grad((out_dense[real] ** 2).sum(), x)
    (grad_knn,) = torch.autograd.grad((out_knn[real] ** 2).sum(), x)
    torch.testing.assert_close(grad_knn, grad_dense, atol=1e-5, rtol=1e-5)
    dense_w = torch.autograd.grad((dense(x, pad)[real] ** 2).sum(), dense.qkv.weight)[0]
    knn_w = torch.autograd.grad((knn(x, pad, neighbours)[real] ** 2).sum(), knn.qkv.weight)[0]
    torch.testing.assert_close(knn_w, dense_w, atol=1e-5, rtol=1e-5)


def test_knn_attends_exactly_to_listed_neighbours_present_in_the_cell():
    """A path graph 0-1-2-3-4-5: token of gene g sees <cls>, itself and g±1 if present."""
    torch.manual_seed(0)
    n_genes, heads, dim = 6, 2, 4
    rows = [[g] + [j for j in (g - 1, g + 1) if 0 <= j < n_genes] for g in range(n_genes)]
    rows = [r + [-1] * (3 - len(r)) for r in rows]
    graph = GeneGraph(n_genes, 3).set(torch.tensor(rows))
    # cell 0: genes 3, 1, 2, 5 (4 and 0 absent); cell 1: genes 0, 1, 4 and a padding token
    genes = torch.tensor([[-1, 3, 1, 2, 5], [-1, 0, 1, 4, 2]])
    pad = torch.tensor([[False] * 5, [False, False, False, False, True]])
    nb = graph.token_neighbours(genes, pad, n_global=1)
    q, k, v = (torch.randn(2, 5, heads, dim, dtype=torch.float64) for _ in range(3))
    out = neighbour_attention(q, k, v, nb.index, nb.valid)
    for cell in range(2):
        position = {int(g): p for p, g in enumerate(genes[cell]) if g >= 0 and not pad[cell, p]}
        for p, g in enumerate(genes[cell].tolist()):
            if g < 0 or pad[cell, p]:
                continue
            allowed = [0] + [position[j] for j in rows[g] if j in position]
            scores = torch.einsum("hd,khd->hk", q[cell, p], k[cell, allowed]) / dim**0.5
            expected = torch.einsum("hk,khd->hd", scores.softmax(-1), v[cell, allowed])
            torch.testing.assert_close(out[cell, p], expected)
    # gene 2 in cell 1 is padding: no real token attends to it (gene 1's neighbour 2 is absent)
    assert not (nb.index[1, :4][nb.valid[1, :4]] == 4).any()


def test_performer_approximates_softmax_attention():
    """FAVOR+ error shrinks with the number of features: < 2% relative with 32,768 features."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 40, 8) * s for s in (0.5, 0.5, 1.0))
    exact = F.scaled_dot_product_attention(q, k, v)
    errors = []
    for m in (64, 32768):
        torch.manual_seed(1)
        kernel = PerformerAttention(8, n_features=m).eval()
        approx = kernel(q, k, v, None)
        errors.append(float((approx - exact).norm() / exact.norm()))
    assert errors[1] < 0.02
    assert errors[1] < errors[0] / 4


def test_performer_features_redrawn_in_training_fixed_at_inference():
    torch.manual_seed(0)
    kernel = PerformerAttention(8, n_features=16, redraw_interval=2)
    q = torch.randn(1, 1, 5, 8)
    kernel.eval()
    before = kernel.projection.clone()
    out1, out2 = kernel(q, q, q, None), kernel(q, q, q, None)
    torch.testing.assert_close(out1, out2)
    assert torch.equal(kernel.projection, before)
    kernel.train()
    for _ in range(3):  # redraw at the third training call
        kernel(q, q, q, None)
    assert not torch.equal(kernel.projection, before)
    assert "projection" in kernel.state_dict()  # saved with the model


@pytest.mark.parametrize("attention", KERNELS)
def test_padding_never_changes_real_tokens(attention):
    torch.manual_seed(0)
    n_genes = 30
    enc = TransformerEncoder(16, 4, 2, 32, dropout=0.0, attention=attention).eval()
    graph = GeneGraph(n_genes, 4)
    graph.set(torch.stack([torch.arange(n_genes), *(torch.randperm(n_genes) for _ in range(3))], 1))
    genes = torch.cat([torch.full((2, 1), -1), torch.randint(0, n_genes, (2, 6))], 1)
    x = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    x_padded = torch.cat([x, torch.randn(2, 4, 16) * 100], dim=1)  # junk in the padding
    genes_padded = torch.cat([genes, torch.randint(0, n_genes, (2, 4))], dim=1)
    pad_padded = torch.cat([pad, torch.ones(2, 4, dtype=torch.bool)], dim=1)
    nb = graph.token_neighbours(genes, pad, 1)
    nb_padded = graph.token_neighbours(genes_padded, pad_padded, 1)
    torch.testing.assert_close(
        enc(x_padded, pad_padded, nb_padded)[:, :7], enc(x, pad, nb), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("attention", KERNELS)
def test_attention_dropout_is_unbiased_and_off_in_eval(attention):
    """Dropout on attention probabilities: random in training, mean = no-dropout output."""
    torch.manual_seed(0)
    n_genes = 10
    genes, pad = cells(n_genes=n_genes, length=6)
    nb = full_graph(n_genes).token_neighbours(genes, pad, 1)
    attn = MultiHeadAttention(8, 2, dropout=0.3, attention=attention)
    x = torch.randn(*genes.shape, 8)
    attn.eval()
    reference = attn(x, pad, nb)
    torch.testing.assert_close(attn(x, pad, nb), reference)
    attn.train()
    if attention == "performer":
        attn.kernel.redraw_interval = 0  # same features in every draw
    n = 4000  # independent draws as copies of the batch
    many = full_graph(n_genes).token_neighbours(genes.repeat(n, 1), pad.repeat(n, 1), 1)
    draws = attn(x.repeat(n, 1, 1), pad.repeat(n, 1), many).view(n, *x.shape)
    real = ~pad
    assert (draws[0] - draws[1])[real].abs().max() > 1e-3
    torch.testing.assert_close(draws.mean(0)[real], reference[real], atol=0.03, rtol=0)


def test_knn_needs_neighbours():
    attn = MultiHeadAttention(8, 2, attention="knn")
    with pytest.raises(ValueError, match="graph neighbours"):
        attn(torch.randn(1, 3, 8))


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an op returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, tuple | list) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_knn_memory_guard_no_genes_squared_tensor():
    """G = 8,192 gene tokens: no tensor of G² (or more) elements, forward or backward."""
    n_genes, slots = 8192, 9
    torch.manual_seed(0)
    nbr = torch.randint(0, n_genes, (n_genes, slots))
    nbr[:, 0] = torch.arange(n_genes)
    graph = GeneGraph(n_genes, slots).set(nbr)
    enc = TransformerEncoder(8, 2, 1, 16, attention="knn")
    genes = torch.cat([torch.tensor([[-1]]), torch.arange(n_genes)[None]], 1)
    pad = torch.zeros_like(genes, dtype=torch.bool)
    x = torch.randn(1, n_genes + 1, 8, requires_grad=True)
    with _LargestTensor() as mode:
        nb = graph.token_neighbours(genes, pad, 1)
        enc(x, pad, nb).sum().backward()
    assert x.grad is not None
    assert mode.largest < n_genes * n_genes / 16
    with _LargestTensor() as dense_mode:  # the check sees a quadratic tensor when there is one
        TransformerEncoder(8, 2, 1, 16, attention="dense")(x[:, :2049], pad[:, :2049]).sum()
        torch.randn(1, 2049, 8) @ torch.randn(1, 8, 2049)
    assert dense_mode.largest >= 2049**2


# -- the gene graph ------------------------------------------------------------------------------
def test_gene_knn_graph_symmetric_self_first_and_matches_bruteforce():
    rng = np.random.default_rng(0)
    counts = sp.csr_matrix(rng.poisson(1.0, (60, 25)).astype(np.float32))
    graph = pp.gene_knn_graph(counts, "counts", k=3, max_degree=25, chunk_size=7)
    assert graph.shape == (25, 26)
    np.testing.assert_array_equal(graph[:, 0], np.arange(25))
    edges = {(i, j) for i, row in enumerate(graph) for j in row[1:] if j >= 0}
    assert all((j, i) in edges for i, j in edges)
    # brute force: cosine of log-normalised expression, top 3 per gene, union
    x = pp.lognormalize(counts).toarray()
    unit = x / np.linalg.norm(x, axis=0)
    sim = unit.T @ unit
    np.fill_diagonal(sim, -np.inf)
    top = np.argsort(-sim, axis=1)[:, :3]
    expected = {(i, int(j)) for i in range(25) for j in top[i]}
    expected |= {(j, i) for i, j in expected}
    assert edges == expected


def test_gene_knn_graph_caps_degree_symmetrically_and_uses_training_cells_only():
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, (80, 40)).astype(np.float32)
    counts[:, 0] += 20 * rng.random(80)  # a hub-ish gene
    graph = pp.gene_knn_graph(counts, "counts", np.arange(50), k=5, max_degree=6)
    degree = (graph >= 0).sum(1) - 1
    assert degree.max() <= 6
    edges = {(i, j) for i, row in enumerate(graph) for j in row[1:] if j >= 0}
    assert all((j, i) in edges for i, j in edges)
    changed = counts.copy()
    changed[50:] = rng.poisson(3.0, (30, 40))
    again = pp.gene_knn_graph(changed, "counts", np.arange(50), k=5, max_degree=6)
    np.testing.assert_array_equal(graph, again)
    never = counts.copy()
    never[:50, 7] = 0  # not expressed in training cells: only itself
    assert (pp.gene_knn_graph(never, "counts", np.arange(50), k=5)[7, 1:] == -1).all()


def test_gene_knn_graph_memory_is_not_quadratic():
    import tracemalloc

    n_genes = 8192
    rng = np.random.default_rng(0)
    counts = sp.random(200, n_genes, density=0.05, random_state=rng, format="csr") * 10
    tracemalloc.start()
    graph = pp.gene_knn_graph(counts, "counts", k=4, chunk_size=256)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert graph.shape == (n_genes, 13)
    assert peak < n_genes * n_genes * 4 / 4  # a float32 G×G matrix would be 268 MB


@pytest.mark.parametrize("attention", KERNELS)
def test_heads_are_separate_for_every_kernel(attention):
    """Changing one head's values changes only that head's output (same head reshapes)."""
    torch.manual_seed(0)
    n_genes = 10
    genes, pad = cells(n_genes=n_genes, length=6)
    nb = full_graph(n_genes).token_neighbours(genes, pad, 1)
    attn = MultiHeadAttention(8, 2, attention=attention).eval()
    q, k, v = (torch.randn(3, 2, 7, 4) for _ in range(3))
    out = attn.kernel(q, k, v, pad, nb)
    v2 = v.clone()
    v2[:, 1] += 1.0
    out2 = attn.kernel(q, k, v2, pad, nb)
    real = ~pad
    torch.testing.assert_close(out[:, 0][real], out2[:, 0][real])
    assert (out[:, 1][real] - out2[:, 1][real]).abs().min() > 0.5  # head 1 moved with its values
