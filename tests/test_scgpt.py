"""scGPT checkpoints: tokens and embeddings equal scGPT's own code, fine-tuning, save/load, errors.

Tiny random checkpoints are written in scGPT's published layout (``best_model.pt`` with the
flash-attention ``Wqkv`` names, ``vocab.json``, ``args.json``) from scGPT's own
``TransformerModel``; the reference tokens come from scGPT's ``DataCollator`` fed as its
``embed_data`` feeds it. scGPT's package (0.2.4) pins ``torchtext`` and ``scvi-tools<1``, so it
is installed without its dependencies (``pip install --no-deps scgpt``) and imported without
its top-level ``__init__`` (which imports torchtext); the modules used here need neither.
"""

import importlib.util
import json
import logging
import sys
import types
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import assert_token_table, make_counts, shared_file

import cellformer as cf
from cellformer import _core, pp
from cellformer.model import CellTransformer, ScGPTClassifier
from cellformer.tokenizers import ScGPTTokenizer
from cellformer.tokenizers._value_bins import scgpt_bins

PAD_VALUE = -2


def import_scgpt():
    """scGPT's model and data collator modules (the test is skipped without the package)."""
    if not hasattr(sys.modules.get("scgpt"), "__path__"):
        spec = importlib.util.find_spec("scgpt")
        if spec is None:
            pytest.skip("scGPT is not installed (pip install --no-deps scgpt==0.2.4)")
        package = types.ModuleType("scgpt")
        package.__path__ = list(spec.submodule_search_locations)
        package.logger = logging.getLogger("scGPT")
        sys.modules["scgpt"] = package
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flash_attn is not installed"
        from scgpt.data_collator import DataCollator
        from scgpt.model.model import TransformerModel
        from scgpt.preprocess import binning
    return TransformerModel, DataCollator, binning


def write_checkpoint(path, genes, d_model=32, layers=2, seed=0, max_seq_len=1200, **args):
    """A random scGPT checkpoint over ``genes`` (special tokens last, as in scGPT's vocab)."""
    TransformerModel, _, _ = import_scgpt()
    vocab = {g: i for i, g in enumerate(genes)}
    for token in ("<pad>", "<cls>", "<eoc>"):
        vocab[token] = len(vocab)
    config = {
        "embsize": d_model,
        "nheads": 4,
        "d_hid": 48,
        "nlayers": layers,
        "n_layers_cls": 3,
        "dropout": 0.2,
        "pad_token": "<pad>",
        "pad_value": PAD_VALUE,
        "mask_value": -1,
        "n_bins": 51,
        "max_seq_len": max_seq_len,
        "input_emb_style": "continuous",
        **args,
    }
    torch.manual_seed(seed)
    model = TransformerModel(
        ntoken=len(vocab),
        d_model=d_model,
        nhead=4,
        d_hid=48,
        nlayers=layers,
        vocab=vocab,
        dropout=0.2,
        pad_token="<pad>",
        pad_value=PAD_VALUE,
        do_mvc=True,
        input_emb_style="continuous",
        use_fast_transformer=False,
    )
    with torch.no_grad():  # LayerNorms away from (1, 0), so a transfer mistake shows
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    state = {
        k.replace("self_attn.in_proj_", "self_attn.Wqkv."): v for k, v in model.state_dict().items()
    }
    path.mkdir(parents=True, exist_ok=True)
    torch.save(state, path / "best_model.pt")
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "args.json").write_text(json.dumps(config))
    return model.eval(), vocab


def reference_tokens(X, gene_ids, vocab, seed, max_length=1200):
    """scGPT's embed_data tokens: <cls> + expressed genes, DataCollator's binning (seeded)."""
    _, DataCollator, _ = import_scgpt()
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    examples = []
    for i, row in enumerate(X):
        nonzero = np.nonzero(row)[0]
        genes = np.insert(gene_ids[nonzero], 0, vocab["<cls>"])
        values = np.insert(row[nonzero], 0, PAD_VALUE)
        examples.append(
            {
                "id": i,
                "genes": torch.from_numpy(genes).long(),
                "expressions": torch.from_numpy(values).float(),
            }
        )
    collator = DataCollator(
        do_padding=True,
        pad_token_id=vocab["<pad>"],
        pad_value=PAD_VALUE,
        do_mlm=False,
        do_binning=True,
        max_length=max_length,
        sampling=True,
        keep_first_n_tokens=1,
    )
    np.random.seed(seed)
    batch = collator(examples)
    return batch["gene"], batch["expr"]


def reference_embeddings(model, genes, values, vocab):
    """scGPT's cell embedding: its ``_encode`` at <cls>, L2-normalised (embed_data)."""
    with torch.no_grad():
        h = model._encode(genes, values, src_key_padding_mask=genes.eq(vocab["<pad>"]))[:, 0]
    return (h / h.norm(dim=1, keepdim=True)).numpy()


@pytest.fixture(scope="module")
def pbmc3k_cells():
    adata = cf.datasets.load(shared_file("pbmc3k_seurat_2000hvg.h5ad"))
    rng = np.random.default_rng(1)
    return adata[np.sort(rng.choice(adata.n_obs, 120, replace=False))].copy()


def test_bins_equal_scgpts_binning_on_real_cells(pbmc3k_cells):
    _, _, binning = import_scgpt()
    X = pbmc3k_cells.X.toarray()
    for seed, row in enumerate(X[:40]):
        values = row[row > 0].astype(np.float32)
        np.random.seed(seed)
        theirs = binning(torch.from_numpy(values), n_bins=51).numpy()
        np.random.seed(seed)
        ours = scgpt_bins(values, 51, np.random.rand(values.size))
        np.testing.assert_array_equal(ours, theirs)
        assert ours.min() >= 1 and ours.max() <= 50
        # ties between quantiles are really spread (count data: many genes with one count)
        assert len(np.unique(ours[values == values.min()])) > 1


def test_tokens_and_embeddings_equal_scgpts_own_code(tmp_path, pbmc3k_cells):
    adata = pbmc3k_cells.copy()
    genes = list(adata.var_names)
    # a vocabulary that lacks some genes of the data and has genes the data lacks
    in_vocab = genes[::3] + genes[1::3] + ["NOT_IN_DATA"]
    reference, vocab = write_checkpoint(tmp_path, in_vocab)
    model = CellTransformer.from_pretrained(tmp_path, adata, labels_key="cell_type")
    assert isinstance(model, ScGPTClassifier)
    # scGPT's embed_data keeps the genes in the vocabulary, in the data's order
    kept = [g for g in genes if g in vocab]
    X = adata[:, kept].X
    want_genes, want_values = reference_tokens(X, np.array([vocab[g] for g in kept]), vocab, seed=3)
    module = model.module
    values = torch.as_tensor(adata[:, model.adata.var_names].X.toarray())
    ids, vals, padding = module.tokens(values, rng=np.random.RandomState(3))
    rows = np.concatenate([[vocab["<pad>"], vocab["<cls>"]], [vocab[g] for g in kept]])
    np.testing.assert_array_equal(rows[ids.numpy()], want_genes.numpy())
    np.testing.assert_array_equal(vals.numpy(), want_values.numpy())
    # the same tokens through both models: the <cls> states agree to 1e-4
    module.eval()
    with torch.no_grad():
        ours = module.encode_tokens(ids, vals, padding)[:, 0].numpy()
    expected = reference_embeddings(reference, want_genes, want_values, vocab)
    np.testing.assert_allclose(
        ours / np.linalg.norm(ours, axis=1, keepdims=True), expected, atol=1e-4
    )
    # the latent representation: scGPT's model on cellformer's own (per-cell seeded) tokens
    z = model.get_latent_representation(adata)
    tokens = model.tokenize(adata)
    theirs = np.vectorize(lambda g: vocab.get(g, vocab["<pad>"]) if g else vocab["<pad>"])(
        tokens["tokens"]
    )
    expected = reference_embeddings(
        reference, torch.as_tensor(theirs), torch.as_tensor(tokens["values"]), vocab
    )
    assert z.shape == (adata.n_obs, 32)
    np.testing.assert_allclose(z, expected, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_tokens_do_not_depend_on_batch_order_or_layer(tmp_path, pbmc3k_cells):
    adata = pbmc3k_cells[:60].copy()
    write_checkpoint(tmp_path, list(adata.var_names), max_seq_len=40)
    model = ScGPTClassifier.from_pretrained(tmp_path, adata, "cell_type")
    tokens = model.tokenize(adata)
    assert_token_table(tokens, adata)
    assert tokens["tokens"].shape[1] == 40  # long cells keep <cls> and a subset
    assert (tokens["tokens"][:, 0] == "<cls>").all()
    reversed_ = model.tokenize(adata[::-1].copy())
    np.testing.assert_array_equal(reversed_["values"][::-1], tokens["values"])
    # log-normalised values have the same order within each cell: the same tokens
    lognorm = adata.copy()
    lognorm.X = lognorm.X.multiply(1e4 / lognorm.X.sum(1)).tocsr().log1p()
    np.testing.assert_array_equal(model.tokenize(lognorm)["values"], tokens["values"])
    np.testing.assert_array_equal(model.tokenize(lognorm)["tokens"], tokens["tokens"])


def test_fine_tune_predict_save_load_and_annotate(tmp_path):
    adata = make_counts(n_cells=150, n_genes=40)
    write_checkpoint(tmp_path / "ckpt", list(adata.var_names))
    model = ScGPTClassifier.from_pretrained(
        tmp_path / "ckpt", adata, labels_key="cell_type", trainable_layers=1
    )
    layers = model.module.encoder.layers
    assert not any(p.requires_grad for p in model.module.embed.parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    frozen = layers[0].self_attn.in_proj_weight.detach().clone()
    moved = layers[1].self_attn.in_proj_weight.detach().clone()
    model.train(max_epochs=2, enable_progress_bar=False)
    torch.testing.assert_close(layers[0].self_attn.in_proj_weight, frozen)
    assert not torch.equal(layers[1].self_attn.in_proj_weight, moved)
    labels = model.predict()
    accuracy = (np.asarray(labels) == adata.obs["cell_type"].to_numpy()).mean()
    assert accuracy > 0.9  # well above the majority class (1/3)
    soft = model.predict(soft=True)
    z = model.get_latent_representation()
    assert adata.obsm["X_cellformer"].shape == (adata.n_obs, 32)
    model.save(tmp_path / "saved")
    loaded = CellTransformer.load(tmp_path / "saved", adata=adata)
    assert isinstance(loaded, ScGPTClassifier)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), soft)
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)
    query = adata[:, ::-1].copy()  # another gene order
    annotated = cf.tl.annotate(query, model=str(tmp_path / "saved"))
    np.testing.assert_array_equal(annotated.obs["cellformer_prediction"], np.asarray(labels))


def test_ensembl_named_cells_on_a_symbol_vocabulary(tmp_path, pbmc3k_cells):
    pytest.importorskip("celltypist")  # the pinned gene tables
    adata = pbmc3k_cells[:40].copy()
    write_checkpoint(tmp_path, list(adata.var_names))
    mapping = pp.map_gene_names(adata.var_names, to="ensembl")
    by_id = adata[:, mapping.query_idx].copy()
    by_id.var_names = [f"{i}.3" for i in mapping.names]  # versioned IDs
    symbols = ScGPTClassifier.from_pretrained(
        tmp_path, adata[:, mapping.query_idx].copy(), "cell_type"
    )
    ids = ScGPTClassifier.from_pretrained(tmp_path, by_id, "cell_type")
    np.testing.assert_array_equal(
        symbols.get_latent_representation(), ids.get_latent_representation()
    )


def test_clear_errors(tmp_path):
    adata = make_counts(n_cells=30, n_genes=12)
    genes = list(adata.var_names)
    with pytest.raises(_core.InputError, match="lacks best_model.pt"):
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "vocab.json").write_text("{}")
        ScGPTClassifier.from_pretrained(tmp_path / "empty", adata, "cell_type")
    write_checkpoint(tmp_path / "other", [f"OTHER{i}" for i in range(12)])
    with pytest.raises(_core.InputError, match="covers none of the 12 genes"):
        ScGPTClassifier.from_pretrained(tmp_path / "other", adata, "cell_type")
    write_checkpoint(tmp_path / "ok", genes)
    (tmp_path / "ok" / "vocab.json").write_text(
        json.dumps({g: i + 500 for i, g in enumerate(genes)})
    )
    with pytest.raises(_core.InputError, match="belongs to another model"):
        ScGPTClassifier.from_pretrained(tmp_path / "ok", adata, "cell_type")
    write_checkpoint(tmp_path / "bn", genes)
    state = torch.load(tmp_path / "bn" / "best_model.pt")
    state["dsbn.bns.0.running_mean"] = torch.zeros(32)
    torch.save(state, tmp_path / "bn" / "best_model.pt")
    with pytest.raises(_core.InputError, match="normalises per batch"):
        ScGPTClassifier.from_pretrained(tmp_path / "bn", adata, "cell_type")
    (tmp_path / "bn" / "best_model.pt").write_bytes(b"not a torch file")
    with pytest.raises(_core.InputError, match="Cannot read the scGPT weights"):
        ScGPTClassifier.from_pretrained(tmp_path / "bn", adata, "cell_type")


def test_tokenizer_edge_cases():
    with pytest.raises(ValueError, match="max_length"):
        ScGPTTokenizer(np.arange(3), cls_id=1, pad_id=0, max_length=1)
    with pytest.raises(ValueError, match="n_bins"):
        ScGPTTokenizer(np.arange(3), cls_id=1, pad_id=0, n_bins=2)
    tokenizer = ScGPTTokenizer(np.array([2, 3, -1]), cls_id=1, pad_id=0)
    # a cell with nothing expressed in the vocabulary is <cls> alone; NaN (unmeasured) is not
    # expressed; genes outside the vocabulary never become tokens
    ids, values, lengths = tokenizer.encode(np.array([[0.0, 0.0, 5.0], [1.0, np.nan, 0.0]]))
    np.testing.assert_array_equal(lengths, [1, 2])
    np.testing.assert_array_equal(ids, [[1, 0], [1, 2]])
    assert values[0].tolist() == [-2.0, -2.0] and values[1, 0] == -2.0
    assert 1 <= values[1, 1] <= 50  # one value ties with every quantile: a random bin, as scGPT


def test_learning_from_unlabelled_cells_keeps_the_checkpoint(tmp_path):
    reference = make_counts(n_cells=90, n_genes=30)
    query = make_counts(n_cells=60, n_genes=30, seed=1)
    write_checkpoint(tmp_path, list(reference.var_names))
    model = ScGPTClassifier.from_pretrained(tmp_path, reference, "cell_type", trainable_layers=1)
    before = {k: v.clone() for k, v in model.module.state_dict().items() if "encoder." in k}
    model._learn_from_unlabeled(query, None, seed=0)  # what train(unlabeled=query) does first
    assert model.adata.n_obs == 150 and model.input_kind_ == "lognorm"
    after = model.module.state_dict()
    for key, value in before.items():
        torch.testing.assert_close(after[key], value)
    assert not any(p.requires_grad for p in model.module.encoder.layers[0].parameters())
    model.train(max_epochs=1, enable_progress_bar=False)
    assert (np.asarray(model.predict(query)) == query.obs["cell_type"].to_numpy()).mean() > 0.9
