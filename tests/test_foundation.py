"""Geneformer checkpoints: tokens, zero-shot embeddings, fine-tuning, save/load, errors.

Tiny random checkpoints are written in Geneformer's published format by the reference library
(``transformers``' ``BertForMaskedLM.save_pretrained`` plus the pickled token and gene median
dictionaries); the reference tokenisation and embedding below follow Geneformer's
``TranscriptomeTokenizer`` and ``EmbExtractor`` step by step.
"""

import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from helpers import assert_token_table, make_counts, shared_file

transformers = pytest.importorskip("transformers")

import cellformer as cf  # noqa: E402
from cellformer import _core, pp  # noqa: E402
from cellformer.model import CellTransformer, GeneformerClassifier  # noqa: E402


def write_checkpoint(path, genes, v2=True, input_size=64, hidden=32, layers=2, seed=0):
    """A random Geneformer-format checkpoint over ``genes`` (their names are the 'IDs')."""
    specials = ["<pad>", "<mask>"] + (["<cls>", "<eos>"] if v2 else [])
    tokens = {t: i for i, t in enumerate(specials)}
    for gene in genes:
        tokens[gene] = len(tokens)
    rng = np.random.default_rng(seed)
    medians = {gene: float(rng.lognormal(0.0, 1.0)) for gene in genes}
    config = transformers.BertConfig(
        vocab_size=len(tokens),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=input_size,
        hidden_act="relu",
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    transformers.BertForMaskedLM(config).save_pretrained(path)
    with open(path / "token_dictionary.pkl", "wb") as f:
        pickle.dump(tokens, f)
    with open(path / "gene_median_dictionary.pkl", "wb") as f:
        pickle.dump(medians, f)
    return tokens, medians


def reference_tokens(X, gene_ids, n_counts, tokens, medians, input_size):
    """Geneformer's TranscriptomeTokenizer, step by step, on a dense or sparse count matrix."""
    keep = np.flatnonzero([g in medians for g in gene_ids])
    norm_factor = np.array([medians[gene_ids[i]] for i in keep])
    gene_tokens = np.array([tokens[gene_ids[i]] for i in keep])
    X_view = sp.csr_matrix(X)[:, keep]
    X_norm = sp.csr_matrix(X_view / n_counts[:, None] * 10_000 / norm_factor)
    special = "<cls>" in tokens and "<eos>" in tokens
    out = []
    for j in range(X_norm.shape[0]):
        row = X_norm[j]
        ranked = gene_tokens[row.indices][np.argsort(-row.data)]
        if special:
            ranked = [tokens["<cls>"], *ranked[: input_size - 2], tokens["<eos>"]]
        else:
            ranked = list(ranked[:input_size])
        out.append(np.asarray(ranked, dtype=np.int64))
    return out


def reference_embeddings(path, token_lists, layer, special=True):
    """Geneformer's EmbExtractor (emb_mode='cell'): mean of the gene tokens of a hidden layer."""
    model = transformers.BertForMaskedLM.from_pretrained(path, output_hidden_states=True).eval()
    lengths = torch.tensor([len(t) for t in token_lists])
    ids = torch.zeros(len(token_lists), int(lengths.max()), dtype=torch.long)
    for i, t in enumerate(token_lists):
        ids[i, : len(t)] = torch.as_tensor(t)
    mask = (torch.arange(ids.shape[1])[None] < lengths[:, None]).long()
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).hidden_states[layer]
    if special:
        h, lengths = h[:, 1:], lengths - 2
    keep = (torch.arange(h.shape[1])[None] < lengths[:, None]).unsqueeze(-1).float()
    return ((h * keep).sum(1) / keep.sum(1)).numpy()


@pytest.fixture(scope="module")
def pbmc3k_cells():
    adata = cf.datasets.load(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, 300, replace=False))].copy()
    adata.obs["n_counts"] = adata.obs["nCount_RNA"].astype(float)
    return adata


def counts_with_ids(seed=0):
    adata = make_counts(n_cells=150, n_genes=40, seed=seed)
    adata.obs["n_counts"] = np.asarray(adata.X.sum(1)).ravel() * 1.5  # a larger transcriptome
    return adata


@pytest.mark.parametrize(("v2", "input_size"), [(True, 64), (False, 64), (True, 4096)])
def test_tokens_equal_geneformers_tokenizer_on_real_cells(tmp_path, pbmc3k_cells, v2, input_size):
    adata = pbmc3k_cells.copy()
    genes = list(adata.var_names)
    # a dictionary that lacks some genes of the data, and has genes the data lacks
    in_dictionary = genes[::3] + genes[1::3] + ["ENSG_NOT_IN_DATA"]
    tokens, medians = write_checkpoint(tmp_path, in_dictionary, v2=v2, input_size=input_size)
    model = CellTransformer.from_pretrained(tmp_path, adata, labels_key="cell_type")
    assert isinstance(model, GeneformerClassifier)
    table = model.tokenize(adata)
    assert_token_table(table, adata)
    ours = table["ids"]
    expected = reference_tokens(
        adata.X, genes, adata.obs["n_counts"].to_numpy(), tokens, medians, input_size
    )
    assert max(len(t) for t in expected) == ours.shape[1]
    if input_size == 64:
        assert max(len(t) for t in expected) == 64  # truncation is exercised
    for row, want in zip(ours, expected, strict=True):
        np.testing.assert_array_equal(row[: len(want)], want)
        assert (row[len(want) :] == tokens["<pad>"]).all()


@pytest.mark.parametrize(("layer", "index"), [("final", -1), ("penultimate", -2)])
def test_zero_shot_embeddings_equal_the_reference_model(tmp_path, pbmc3k_cells, layer, index):
    adata = pbmc3k_cells[:120].copy()
    genes = list(adata.var_names)
    tokens, medians = write_checkpoint(tmp_path, genes, v2=True, input_size=256)
    model = CellTransformer.from_pretrained(
        tmp_path, adata, labels_key="cell_type", embedding_layer=layer
    )
    z = model.get_latent_representation(adata)
    expected = reference_embeddings(
        tmp_path,
        reference_tokens(adata.X, genes, adata.obs["n_counts"].to_numpy(), tokens, medians, 256),
        index,
    )
    assert z.shape == (adata.n_obs, 32)
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_v1_embeddings_without_special_tokens(tmp_path):
    adata = counts_with_ids()
    genes = list(adata.var_names)
    tokens, medians = write_checkpoint(tmp_path, genes, v2=False, input_size=16)
    model = GeneformerClassifier.from_pretrained(tmp_path, adata, "cell_type")
    expected = reference_embeddings(
        tmp_path,
        reference_tokens(adata.X, genes, adata.obs["n_counts"].to_numpy(), tokens, medians, 16),
        -1,
        special=False,
    )
    np.testing.assert_allclose(model.get_latent_representation(), expected, rtol=1e-4, atol=1e-6)


def test_fine_tune_predict_save_load_identical(tmp_path):
    adata = counts_with_ids()
    write_checkpoint(tmp_path / "ckpt", list(adata.var_names), input_size=48)
    model = CellTransformer.from_pretrained(
        tmp_path / "ckpt", adata, labels_key="cell_type", trainable_layers=1
    )
    bert = model.module.bert
    assert not any(p.requires_grad for p in bert.embeddings.parameters())
    assert not any(p.requires_grad for p in bert.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in bert.encoder.layer[1].parameters())
    frozen = bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    moved = bert.encoder.layer[1].attention.self.query.weight.detach().clone()
    model.train(max_epochs=3, enable_progress_bar=False)
    torch.testing.assert_close(bert.encoder.layer[0].attention.self.query.weight, frozen)
    assert not torch.equal(bert.encoder.layer[1].attention.self.query.weight, moved)
    labels = model.predict()
    accuracy = (np.asarray(labels) == adata.obs["cell_type"].to_numpy()).mean()
    assert accuracy > 0.9  # the linear path on clearly separated synthetic types
    assert adata.obs["cellformer_prediction"].notna().all()
    soft = model.predict(soft=True)
    z = model.get_latent_representation()
    assert adata.obsm["X_cellformer"].shape == (adata.n_obs, 32)
    model.save(tmp_path / "saved")
    loaded = CellTransformer.load(tmp_path / "saved", adata=adata)
    assert isinstance(loaded, GeneformerClassifier)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), soft)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    assert loaded.module.trainable_layers == 1


def test_bayesian_head_and_mc_dropout(tmp_path):
    adata = counts_with_ids()
    write_checkpoint(tmp_path, list(adata.var_names), input_size=48)
    model = GeneformerClassifier.from_pretrained(
        tmp_path, adata, "cell_type", head="bayesian", linear_path=False
    )
    model.train(max_epochs=2, enable_progress_bar=False)
    mean, std = model.predict(soft=True, mc_samples=4, mc_dropout=True, return_std=True)
    assert mean.shape == (adata.n_obs, 3)
    np.testing.assert_allclose(mean.sum(1), 1.0, rtol=1e-5)
    assert (std.to_numpy() > 0).any()
    assert "cellformer_mutual_info" in adata.obs


def test_query_with_another_gene_order_and_missing_genes(tmp_path):
    adata = counts_with_ids()
    write_checkpoint(tmp_path, list(adata.var_names), input_size=48)
    model = GeneformerClassifier.from_pretrained(tmp_path, adata, "cell_type", linear_path=False)
    query = adata[:, adata.var_names[::-1][:-5]].copy()  # reversed, 5 genes not measured
    tokens = model.tokenize(query)["ids"]
    reference = model.tokenize(adata[:, list(query.var_names)[::-1]].copy())["ids"]
    np.testing.assert_array_equal(tokens, reference)
    dropped = {model.module.rank_value.token_ids[i] for i in range(5)}
    assert not dropped & set(tokens.ravel().tolist())


def test_checkpoint_written_by_another_process_loads_alone(tmp_path):
    adata = counts_with_ids()
    script = textwrap.dedent(
        f"""
        import pickle, numpy as np, torch, transformers
        genes = {list(adata.var_names)!r}
        tokens = {{"<pad>": 0, "<mask>": 1, "<cls>": 2, "<eos>": 3}}
        for g in genes:
            tokens[g] = len(tokens)
        config = transformers.BertConfig(vocab_size=len(tokens), hidden_size=16,
            num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=32)
        transformers.BertForMaskedLM(config).save_pretrained({str(tmp_path)!r})
        pickle.dump(tokens, open({str(tmp_path / "token_dictionary_gc104M.pkl")!r}, "wb"))
        medians = {{g: 1.0 + i / 10 for i, g in enumerate(genes)}}
        pickle.dump(medians, open({str(tmp_path / "gene_median_dictionary_gc104M.pkl")!r}, "wb"))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True)
    model = CellTransformer.from_pretrained(str(tmp_path), adata, labels_key="cell_type")
    assert model.module.rank_value.special and model.module.rank_value.input_size == 32
    assert model.get_latent_representation().shape == (adata.n_obs, 16)


def test_clear_errors(tmp_path):
    adata = counts_with_ids()
    (tmp_path / "empty").mkdir()
    with pytest.raises(_core.InputError, match="no pretrained model cellformer knows.*Geneformer"):
        CellTransformer.from_pretrained(tmp_path / "empty", adata, labels_key="cell_type")
    # the kinds are the registry's (scBERT registers like Geneformer and scGPT), in its order
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    kinds = ".*".join(["CellTransformer.pretrain", "Geneformer", "scGPT folder", "or an scBERT"])
    with pytest.raises(_core.InputError, match=f"knows: expected a directory with .*{kinds}"):
        CellTransformer.from_pretrained(tmp_path / "notes.txt", adata, labels_key="cell_type")
    files = [kind.cls.__name__ for kind in cf.model.base.checkpoint_kinds()]
    assert files == ["GeneformerClassifier", "ScGPTClassifier", "CellTransformer"]
    write_checkpoint(tmp_path / "other", [f"ENSG{i:011d}" for i in range(30)], input_size=32)
    with pytest.raises(_core.InputError, match="covers none of the 40 genes.*gene_id_key"):
        GeneformerClassifier.from_pretrained(tmp_path / "other", adata, "cell_type")
    mapping = {f"GENE{i}": f"ENSG{i:011d}" for i in range(30)}
    mapped = GeneformerClassifier.from_pretrained(
        tmp_path / "other", adata, "cell_type", gene_mapping=mapping
    )
    assert (mapped.module.rank_value.token_ids >= 0).sum() == 30
    write_checkpoint(tmp_path / "tiny", list(adata.var_names), input_size=2)
    with pytest.raises(ValueError, match="input size.*at least 3"):
        GeneformerClassifier.from_pretrained(tmp_path / "tiny", adata, "cell_type")
    write_checkpoint(tmp_path / "ok", list(adata.var_names), input_size=32)
    lognorm = adata.copy()
    sc = pytest.importorskip("scanpy")
    sc.pp.normalize_total(lognorm, target_sum=1e4)
    sc.pp.log1p(lognorm)
    with pytest.raises(_core.InputError, match="raw counts"):
        GeneformerClassifier.from_pretrained(tmp_path / "ok", lognorm, "cell_type")
    model = GeneformerClassifier.from_pretrained(tmp_path / "ok", adata, "cell_type")
    with pytest.raises(_core.InputError, match="raw counts"):
        model.predict(lognorm)
    (tmp_path / "two").mkdir()
    write_checkpoint(tmp_path / "two", list(adata.var_names), input_size=32)
    (tmp_path / "two" / "token_dictionary_v2.pkl").write_bytes(b"")
    with pytest.raises(_core.InputError, match="More than one token dictionary.*token_dictionary="):
        GeneformerClassifier.from_pretrained(tmp_path / "two", adata, "cell_type")


# -- scBERT ---------------------------------------------------------------------------------------


def write_scbert(path, n_genes, dim=16, depth=2, heads=2, dim_head=8, seed=0):
    """A random scBERT-format checkpoint: performer-pytorch's PerformerLM state dict."""
    performer = pytest.importorskip("performer_pytorch")
    torch.manual_seed(seed)
    model = performer.PerformerLM(
        num_tokens=7,  # bins 0..5 and <mask>
        max_seq_len=n_genes + 1,  # the genes and scBERT's extra last position
        dim=dim,
        depth=depth,
        heads=heads,
        dim_head=dim_head,
        rotary_position_emb=False,  # an absolute table: scBERT's gene2vec positions
        attn_out_bias=True,  # scBERT's attention output projection has a bias
    ).eval()
    torch.save({"epoch": 1, "model_state_dict": model.state_dict()}, path)
    return model


def scbert_bins(counts, library):
    """scBERT's preprocessing: normalise to 1e4, log2(1 + x), floor, cap at 5."""
    counts = np.asarray(counts.toarray() if sp.issparse(counts) else counts, dtype=np.float64)
    normalised = counts / np.asarray(library, dtype=np.float64).reshape(-1, 1) * 1e4
    return np.minimum(np.floor(np.log2(1 + normalised)), 5).astype(np.int64)


def test_scbert_checkpoint_outputs_equal_performer_pytorch(tmp_path, pbmc3k_cells):
    adata = pbmc3k_cells[:60].copy()
    genes = list(adata.var_names[:150])
    reference = write_scbert(tmp_path / "panglao_pretrain.pth", len(genes))
    model = CellTransformer.from_pretrained(
        tmp_path / "panglao_pretrain.pth", adata, labels_key="cell_type", genes=genes
    )
    module = model.module.eval()
    tokens = model.tokenize(adata)
    # cellformer normalises by the total over all of a cell's genes (scBERT: over its gene list)
    bins = scbert_bins(adata[:, genes].X, adata.X.sum(1))
    np.testing.assert_array_equal(tokens["bins"][:, 1:], bins)  # after <cls>
    x = torch.as_tensor(np.asarray(model.adata.X.toarray()))
    with torch.no_grad():
        ours_tokens = module.tokens(x)
        ours = module.encoder(module.embed(ours_tokens), ours_tokens.padding_mask)
        sequence = torch.cat(
            [torch.as_tensor(bins), torch.zeros(len(bins), 1, dtype=torch.long)], 1
        )
        expected = reference(sequence, return_encodings=True)
    # cellformer puts scBERT's extra last token first (as <cls>)
    torch.testing.assert_close(ours[:, 1:], expected[:, :-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours[:, 0], expected[:, -1], rtol=1e-4, atol=1e-5)


def test_scbert_fine_tune_save_load_and_errors(tmp_path):
    adata = counts_with_ids()
    genes = list(adata.var_names)
    write_scbert(tmp_path / "scbert.pth", len(genes))
    with pytest.raises(_core.InputError, match="needs its gene list"):
        CellTransformer.from_pretrained(tmp_path / "scbert.pth", adata, labels_key="cell_type")
    with pytest.raises(_core.InputError, match="41 positions, so 40 genes"):
        CellTransformer.from_pretrained(
            tmp_path / "scbert.pth", adata, labels_key="cell_type", genes=genes[:-1]
        )
    model = CellTransformer.from_pretrained(
        tmp_path / "scbert.pth", adata, labels_key="cell_type", genes=genes, trainable_layers=1
    )
    first = model.module.encoder.layers[0].attn.qkv.weight.detach().clone()
    model.train(max_epochs=2, enable_progress_bar=False)
    torch.testing.assert_close(model.module.encoder.layers[0].attn.qkv.weight, first)
    soft = model.predict(adata, soft=True)
    model.save(tmp_path / "saved")
    loaded = CellTransformer.load(tmp_path / "saved")
    pd.testing.assert_frame_equal(loaded.predict(adata, soft=True), soft)


def test_symbol_named_cells_on_an_ensembl_dictionary(tmp_path, pbmc3k_cells):
    """Geneformer's dictionaries are keyed by Ensembl IDs: symbols are mapped without help."""
    pytest.importorskip("celltypist")  # the pinned gene tables
    adata = pbmc3k_cells.copy()
    mapping = pp.map_gene_names(adata.var_names, to="ensembl")
    ids = np.asarray(mapping.names, dtype=str)
    tokens, medians = write_checkpoint(tmp_path, list(ids))
    symbols = CellTransformer.from_pretrained(tmp_path, adata.copy(), labels_key="cell_type")
    with_ids = adata[:, mapping.query_idx].copy()
    with_ids.var["ensembl_id"] = [f"{i}.5" if k % 2 else i for k, i in enumerate(ids)]
    by_id = CellTransformer.from_pretrained(tmp_path, with_ids, labels_key="cell_type")
    np.testing.assert_array_equal(symbols.tokenize(adata)["ids"], by_id.tokenize(with_ids)["ids"])
