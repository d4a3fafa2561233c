"""Tokenizers: exact tokens of each preset on a hand-made matrix, statistics, embeddings."""

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from cellformer import InputError, _core
from cellformer.tokenizers import (
    N_SPECIAL,
    PRESETS,
    GeneEncoder,
    TokenEmbedding,
    Tokenizer,
    get_config,
    project_table,
)

GENES = ["G0", "G1", "G2", "G3", "G4"]
# counts; library sizes 10, 4, 10 → CP10k: [4000, 0, 1000, 0, 5000], [0, 5000, 0, 5000, 0],
# [1000, 1000, 1000, 1000, 6000]. Non-zero medians per gene: 2500, 3000, 1000, 3000, 5500.
COUNTS = np.array(
    [[4, 0, 1, 0, 5], [0, 2, 0, 2, 0], [1, 1, 1, 1, 6]],
    dtype=np.float32,
)
PAD, CLS = 0, 1
G = {g: N_SPECIAL + i for i, g in enumerate(GENES)}  # token id of each gene


def tokens(preset, X=COUNTS, kind="counts", **overrides):
    tok = Tokenizer(GENES, get_config(preset, **overrides))
    tok.fit(sp.csr_matrix(X), kind)
    return tok, tok.transform(sp.csr_matrix(X), kind)


def test_geneformer_rank_value_encoding_exact():
    tok, out = tokens("geneformer", max_length=4)
    np.testing.assert_allclose(tok.median.numpy(), [2500, 3000, 1000, 3000, 5500], rtol=1e-4)
    # cell 0: G0 4000/2500=1.6 > G2 1000/1000=1 > G4 5000/5500; cell 1: tie kept in gene order;
    # cell 2: G4 1.09 > G2 1 > G0 .4 > G1 = G3 .33, truncated to 4 gene tokens
    expected = [
        [CLS, G["G0"], G["G2"], G["G4"], PAD],
        [CLS, G["G1"], G["G3"], PAD, PAD],
        [CLS, G["G4"], G["G2"], G["G0"], G["G1"]],
    ]
    np.testing.assert_array_equal(out["ids"], expected)
    np.testing.assert_array_equal(out["padding_mask"], np.array(expected) == PAD)
    assert "bins" not in out  # Geneformer has no value embedding: the order carries it
    assert tok.config.use_positions
    # the values are the log-normalised expression of the token's gene
    np.testing.assert_allclose(out["values"][0, 1:4], np.log1p([4000, 1000, 5000]), rtol=1e-5)
    assert out["values"][0, 4] == 0


def test_scgpt_quantile_bins_exact():
    _, out = tokens("scgpt", n_bins=5)
    # fixed gene order, zeros dropped; bin = 1 + floor(rank * 4 / n_nonzero), ties share a bin
    np.testing.assert_array_equal(
        out["ids"],
        [
            [CLS, G["G0"], G["G2"], G["G4"], PAD, PAD],
            [CLS, G["G1"], G["G3"], PAD, PAD, PAD],
            [CLS, G["G0"], G["G1"], G["G2"], G["G3"], G["G4"]],
        ],
    )
    np.testing.assert_array_equal(
        out["bins"], [[0, 2, 1, 3, 0, 0], [0, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 4]]
    )


def test_fixed_order_truncation_keeps_most_expressed_genes_in_gene_order():
    _, out = tokens("scgpt", n_bins=5, max_length=2)
    np.testing.assert_array_equal(
        out["ids"], [[CLS, G["G0"], G["G4"]], [CLS, G["G1"], G["G3"]], [CLS, G["G0"], G["G4"]]]
    )
    # bins are quantiles over all of the cell's non-zero genes, not only the kept ones
    np.testing.assert_array_equal(out["bins"], [[0, 2, 3], [0, 1, 1], [0, 1, 4]])


def test_scbert_every_gene_with_clipped_log_bins():
    lognorm = np.array([[0.5, 0.0, 2.3, 7.0, 1.0], [0.0, 0.0, 0.0, 4.9, 0.0]], np.float32)
    _, out = tokens("scbert", X=lognorm, kind="lognorm")
    np.testing.assert_array_equal(out["ids"], [[CLS, *G.values()]] * 2)
    assert not out["padding_mask"].any()  # zeros are tokens too, never padding
    np.testing.assert_array_equal(out["bins"], [[0, 0, 0, 2, 5, 1], [0, 0, 0, 0, 4, 0]])


def test_default_preset_ranks_detected_genes_with_values():
    tok, out = tokens("default")
    np.testing.assert_array_equal(out["ids"][0], [CLS, G["G0"], G["G2"], G["G4"], PAD, PAD])
    assert tok.config.expression == "continuous" and not tok.config.use_positions
    assert set(PRESETS) == {"default", "geneformer", "scgpt", "scbert"}


def test_random_order_is_a_permutation_of_the_detected_genes():
    tok = Tokenizer(GENES, {"order": "random"})
    x = torch.log1p(torch.as_tensor(COUNTS))
    a = tok(x, generator=torch.Generator().manual_seed(0))
    b = tok(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a.ids, b.ids)
    for row, counts in zip(a.ids.numpy(), COUNTS, strict=True):
        genes = sorted(row[(row >= N_SPECIAL)] - N_SPECIAL)
        assert genes == list(np.flatnonzero(counts))


def test_training_subsample_is_a_random_subset_of_the_detected_genes():
    """train_max_length: at most that many of a cell's genes, a new draw each time."""
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(40)]
    counts = rng.poisson(1.0, (30, 40)).astype(np.float32)
    x = torch.log1p(torch.as_tensor(counts))
    tok = Tokenizer(genes, get_config("default", train_max_length=6))
    tok.fit(sp.csr_matrix(counts), "counts")
    full = tok(x)  # prediction: every detected gene (up to max_length)
    assert full.gene_mask.sum(1).tolist() == (counts > 0).sum(1).tolist()
    draws = [tok(x, subsample=6, generator=torch.Generator().manual_seed(s)) for s in (0, 1)]
    for sub in draws:
        n = sub.gene_mask.sum(1)
        assert n.tolist() == np.minimum((counts > 0).sum(1), 6).tolist()
        for i, (row, values) in enumerate(zip(sub.ids, sub.values, strict=True)):
            kept = row[row >= N_SPECIAL] - N_SPECIAL
            assert (counts[i, kept.numpy()] > 0).all()  # detected genes only, each once
            assert len(set(kept.tolist())) == len(kept)
            # a kept gene's value is its value in the full tokenisation
            ref = dict(zip(full.ids[i].tolist(), full.values[i].tolist(), strict=True))
            assert values[row >= N_SPECIAL].tolist() == [ref[int(g)] for g in row[row >= N_SPECIAL]]
        assert sub.ids.shape[1] <= 1 + 6
    assert not torch.equal(draws[0].ids, draws[1].ids)


def test_statistics_are_fit_on_the_given_cells_only():
    tok = Tokenizer(GENES, "geneformer")
    tok.fit(sp.csr_matrix(COUNTS), "counts", indices=np.array([0, 1]))
    # G0 only in cell 0 (4000), G2 only in cell 0 (1000); G4 in cell 0 (5000)
    np.testing.assert_allclose(tok.median.numpy(), [4000, 5000, 1000, 5000, 5000], rtol=1e-4)


def test_hvg_restricts_the_vocabulary():
    rng = np.random.default_rng(0)
    rates = np.repeat(np.geomspace(0.5, 8, 10), 20)  # 10 expression levels × 20 genes
    X = rng.poisson(rates, size=(300, 200)).astype(np.float32)
    variable = np.arange(0, 200, 20)  # one gene per level: off in half the cells, ×10 in half
    X[:150, variable] = 0
    X[150:, variable] = rng.poisson(10 * rates[variable], size=(150, 10))
    X[:, 1] += 1  # no empty cells
    tok = Tokenizer([f"g{i}" for i in range(200)], {"preset": "scgpt", "n_hvg": 10})
    tok.fit(sp.csr_matrix(X), "counts", indices=np.arange(0, 300, 2))
    assert int(tok.gene_mask.sum()) == 10
    selected = np.flatnonzero(tok.gene_mask.numpy())
    assert set(selected) == set(variable)
    out = tok.transform(X, "counts")
    assert set(np.unique(out["ids"])) <= {PAD, CLS, *(N_SPECIAL + selected)}
    assert tok.max_tokens == 11


def test_batch_context_tokens_follow_cls():
    tok = Tokenizer(GENES, {"context": ("batch",)}, n_batches=2)
    tok.fit(COUNTS, "counts")
    out = tok.transform(COUNTS, "counts", batch=np.array([0, 1, 1]))
    batch_ids = N_SPECIAL + len(GENES) + np.array([0, 1, 1])
    np.testing.assert_array_equal(out["ids"][:, 1], batch_ids)
    assert tok.vocabulary[batch_ids[1]] == "<batch:1>"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"max_length": 0}, "max_length must be at least 1"),
        ({"order": "alphabetical"}, "Unknown order"),
        ({"expression": "log"}, "Unknown expression"),
        ({"n_bins": 1}, "n_bins"),
        ({"maxlen": 3}, "Unknown tokenizer options"),
        ({"context": ("donor",)}, "Unknown context"),
        ({"train_max_length": 0}, "train_max_length must be at least 1"),
        ({"train_max_length": 4, "positional": True}, "train_max_length needs positional=False"),
    ],
)
def test_bad_configs_are_clear_errors(config, message):
    with pytest.raises(ValueError, match=message):
        get_config(config)


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="Unknown tokenizer preset 'geneformr'.*geneformer"):
        get_config("geneformr")


def test_rank_order_needs_fitted_medians():
    with pytest.raises(InputError, match="fit"):
        Tokenizer(GENES, "geneformer")(torch.zeros(2, 5))


def test_gene_table_projection_and_missing_genes():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(4, 16)), index=["G0", "G1", "G3", "OTHER"])
    vectors, found = project_table(table, GENES, d_model=8)
    assert vectors.shape == (5, 8)
    np.testing.assert_array_equal(found, [True, True, False, True, False])
    assert np.all(vectors[~found] == 0)
    with pytest.raises(ValueError, match="None of the model's genes"):
        project_table(table, ["X1", "X2"], d_model=8)


def test_frozen_table_vectors_do_not_move_but_missing_genes_learn():
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(3, 8)), index=["G0", "G1", "G3"])
    vectors, found = project_table(table, GENES, d_model=8)
    enc = GeneEncoder(N_SPECIAL + len(GENES), 8, table=(vectors, found), freeze=True)
    before = enc.embedding.weight.detach().clone()
    opt = torch.optim.SGD(enc.parameters(), lr=0.1)
    enc(torch.arange(N_SPECIAL + len(GENES))[None]).pow(2).sum().backward()
    opt.step()
    moved = (enc.embedding.weight - before).abs().sum(1) > 0
    table_ids = N_SPECIAL + np.flatnonzero(found)
    assert not moved[table_ids].any()
    assert moved[N_SPECIAL + 2] and moved[N_SPECIAL + 4]  # genes missing from the table
    np.testing.assert_allclose(before[table_ids].numpy(), vectors[found], rtol=1e-6)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_token_embedding_shapes_and_padding(preset):
    tok, _ = tokens(preset, n_bins=5) if preset != "geneformer" else tokens(preset)
    x = torch.log1p(torch.as_tensor(COUNTS) / torch.as_tensor(COUNTS).sum(1, keepdim=True) * 1e4)
    t = tok(x)
    emb = TokenEmbedding(tok.config, tok.vocab_size, tok.max_tokens, d_model=8)
    h = emb(t)
    assert h.shape == (*t.ids.shape, 8)
    assert torch.isfinite(h).all()


@pytest.mark.parametrize(
    "config",
    [
        "default",
        "geneformer",
        "scgpt",
        "scbert",
        {"preset": "scgpt", "max_length": 7},
        {"preset": "default", "order": "expression", "max_length": 5},
        {"preset": "scbert", "max_length": 9, "expression": "quantile_bins"},
    ],
)
def test_sparse_and_dense_paths_agree(config):
    """transform() works on CSR non-zeros, the model on dense minibatches: same tokens."""
    rng = np.random.default_rng(1)
    X = rng.poisson(0.6, size=(50, 40)).astype(np.float32)
    X[:, 0] += 1
    tok = Tokenizer([f"g{i}" for i in range(40)], config)
    tok.fit(sp.csr_matrix(X), "counts")
    sparse = tok.transform(sp.csr_matrix(X), "counts", chunk_size=16)
    dense = tok.transform(X, "counts", chunk_size=16)
    for key in sparse:
        np.testing.assert_array_equal(sparse[key], dense[key], err_msg=key)


@pytest.mark.parametrize("order", ["rank", "expression", "fixed"])
def test_matches_a_per_cell_reference(order):
    rng = np.random.default_rng(2)
    X = rng.poisson(0.8, size=(40, 30)).astype(np.float32)
    X[:, 3] += 1
    tok = Tokenizer([f"g{i}" for i in range(30)], {"order": order, "max_length": 12})
    tok.fit(X, "counts")
    out = tok.transform(sp.csr_matrix(X), "counts")
    lognorm = np.log1p(X / X.sum(1, keepdims=True) * 1e4).astype(np.float32)
    median = tok.median.numpy()
    for cell, x in enumerate(lognorm):
        genes = np.flatnonzero(x > 0)
        if order == "rank":
            key = np.expm1(x[genes]) / median[genes]
        else:
            key = x[genes]
        ranked = genes[np.lexsort((genes, -key))][:12]
        if order == "fixed":
            ranked = np.sort(ranked)
        got = out["ids"][cell, 1:]
        np.testing.assert_array_equal(got[got != 0] - N_SPECIAL, ranked)


def test_zscore_values_use_training_statistics():
    tok = Tokenizer(GENES, {"value_scale": "zscore"})
    tok.fit(sp.csr_matrix(COUNTS), "counts", indices=np.array([0, 2]))
    lognorm = np.log1p(COUNTS / COUNTS.sum(1, keepdims=True) * 1e4)
    mean, std = lognorm[[0, 2]].mean(0), lognorm[[0, 2]].std(0)
    std[std < 1e-8] = 1
    out = tok.transform(COUNTS, "counts")
    genes = out["ids"][1, 1:3] - N_SPECIAL  # cell 1: G1 and G3
    expected = (lognorm[1, genes] - mean[genes]) / std[genes]
    np.testing.assert_allclose(out["values"][1, 1:3], expected, rtol=1e-4, atol=1e-5)


def test_paired_timepoints_hand_made_cell():
    import anndata as ad

    from cellformer import pp
    from cellformer.tokenizers import SPECIAL_TOKENS

    genes = ["A", "B", "C"]
    counts = np.array([[50.0, 0.0, 10.0], [0.0, 0.0, 0.0]])
    before = np.array([[0.0, 20.0, 70.0], [0.0, 5.0, 0.0]])
    counts[1, 0] = 3.0  # no empty cell
    current = ad.AnnData(sp.csr_matrix(counts))
    current.var_names = genes
    current.obs_names = ["c1", "c2"]
    previous = ad.AnnData(sp.csr_matrix(before[::-1]))  # other cell order, matched by name
    previous.var_names = genes
    previous.obs_names = ["c2", "c1"]
    paired = pp.pair_timepoints(current, previous)
    assert list(paired.var_names) == ["A", "B", "C", "A@previous", "B@previous", "C@previous"]
    # each time point normalised by its own library: log1p(x / sum * 1e4)
    expected = np.log1p(
        np.hstack([counts / counts.sum(1, keepdims=True), before / before.sum(1, keepdims=True)])
        * 1e4
    )
    np.testing.assert_allclose(paired.X.toarray(), expected, rtol=1e-6)
    tok = Tokenizer(
        paired.var_names,
        {"preset": "default", "paired": True, "order": "expression", "max_length": 4},
    )
    tokens = tok(torch.as_tensor(paired.X.toarray(), dtype=torch.float32))
    vocab = np.asarray(tok.vocabulary)
    words = vocab[tokens.ids.numpy()]
    # <cls> + 2 current genes (most expressed first), <sep>, 2 previous genes, padding
    assert list(words[0]) == ["<cls>", "A", "C", "<sep>", "C", "B"]
    assert list(words[1]) == ["<cls>", "A", "<pad>", "<sep>", "B", "<pad>"]
    assert tokens.segments.tolist() == [[0, 0, 0, 1, 1, 1]] * 2
    assert tokens.padding_mask.tolist()[1] == [False, False, True, False, False, True]
    assert SPECIAL_TOKENS[tokens.ids[0, 3]] == "<sep>"
    np.testing.assert_allclose(tokens.values[0, 4], expected[0, 5], rtol=1e-6)
    # the tokenizer is never changed while a half is tokenised (threads, DataLoader workers)
    seen = []
    forward = Tokenizer.forward

    def spy(self, *args, **kwargs):
        seen.append((self is tok, tok.config.paired, tok.config.max_length))
        return forward(self, *args, **kwargs)

    Tokenizer.forward = spy
    try:
        again = tok(torch.as_tensor(paired.X.toarray(), dtype=torch.float32))
    finally:
        Tokenizer.forward = forward
    assert seen == [(True, True, 4), (False, True, 4), (False, True, 4)]
    assert torch.equal(again.ids, tokens.ids)
    with pytest.raises(ValueError, match="pair_timepoints"):
        Tokenizer(["A", "B", "C", "D"], {"preset": "default", "paired": True})
    with pytest.raises(_core.InputError, match="not in previous"):
        pp.pair_timepoints(current, previous[:1])


def test_paired_model_trains_and_uses_segments():
    from helpers import make_counts

    from cellformer import pp
    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=120, n_genes=20)
    adata.layers["day0"] = adata.X[::-1].copy()
    paired = pp.pair_timepoints(adata, "day0")
    CellTransformer.setup_anndata(paired, labels_key="cell_type")
    model = CellTransformer(
        paired, tokenizer={"preset": "default", "paired": True}, d_model=16, n_heads=2
    )
    assert model.module.embed.segment is not None
    model.train(max_epochs=2, enable_progress_bar=False)
    tokens = model.tokenize(paired)
    assert (tokens["segments"][:, 0] == 0).all() and (tokens["segments"][:, -1] == 1).all()
    assert (tokens["tokens"] == "<sep>").sum(1).tolist() == [1] * paired.n_obs
    assert model.predict(soft=True).shape == (120, 3)
    with pytest.raises(ValueError, match="paired"):
        CellTransformer(paired, tokenizer={"preset": "default", "paired": True}, pooling="genes")
