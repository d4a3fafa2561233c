"""Masked-expression pretraining, fine-tuning from a pretrained encoder, and the linear path."""

import numpy as np
import pytest
import torch
from helpers import make_counts

from cellformer.model import CellTransformer, LinearClassifier, PretrainedEncoder, pretrain
from cellformer.module import TransformerModule
from cellformer.module._pretrain import mask_tokens
from cellformer.tokenizers._tokens import MASK

SMALL = {"d_model": 16, "n_heads": 2, "batch_size": 32, "enable_progress_bar": False}


def _tokens(preset="default", n_cells=420):
    adata = make_counts(n_cells=n_cells, n_genes=60)
    module = TransformerModule(60, 3, adata.var_names, tokenizer=preset, d_model=16, n_heads=2)
    x = torch.log1p(torch.as_tensor(adata.X.toarray()))
    module.tokenizer.fit(adata.X, "counts")
    return module.tokenizer(x)


@pytest.mark.parametrize("target", ["expression", "gene"])
def test_masking_selects_only_real_gene_tokens_at_the_requested_rate(target):
    tokens = _tokens("scgpt")
    real = tokens.gene_mask & ~tokens.padding_mask
    ids, bins = tokens.ids.clone(), tokens.bins.clone()
    g = torch.Generator().manual_seed(0)
    selected = mask_tokens(tokens, 0.3, 0.8, 0.1, target, n_genes=60, n_bins=51, generator=g)
    assert not (selected & ~real).any()  # never padding, <cls> or context tokens
    assert float(selected.sum() / real.sum()) == pytest.approx(0.3, abs=0.02)
    unchanged = ~selected
    assert torch.equal(tokens.ids[unchanged], ids[unchanged])
    if target == "gene":
        hidden = tokens.ids == MASK
        assert (hidden <= selected).all() and float(hidden.sum() / selected.sum()) > 0.7
        assert tokens.value_mask is None
    else:
        assert (tokens.value_mask <= selected).all()
        assert float(tokens.value_mask.sum() / selected.sum()) == pytest.approx(0.8, abs=0.05)
        assert torch.equal(tokens.bins[unchanged], bins[unchanged])
    with pytest.raises(ValueError, match="mask_prob"):
        mask_tokens(tokens, 0.0)


def test_pretraining_lowers_the_masked_loss_and_saves(tmp_path):
    adata = make_counts(n_cells=300, n_genes=40)
    encoder = pretrain(adata, max_epochs=6, **SMALL)
    losses = [row["pretrain_loss"] for row in encoder.history]
    assert len(losses) == 6 and losses[-1] < 0.8 * losses[0]
    encoder.save(tmp_path / "enc")
    loaded = PretrainedEncoder.load(tmp_path / "enc")
    assert loaded.genes == list(adata.var_names) and loaded.architecture["d_model"] == 16
    for key, value in encoder.state_dict.items():
        assert torch.equal(loaded.state_dict[key], value), key
    with pytest.raises(FileExistsError):
        encoder.save(tmp_path / "enc")
    with pytest.raises(ValueError, match="target='gene'"):
        pretrain(adata, tokenizer="geneformer", target="expression", **SMALL)
    gene_encoder = pretrain(adata, tokenizer="geneformer", max_epochs=1, **SMALL)  # auto → gene
    assert "heads.gene.weight" not in gene_encoder.state_dict  # only the backbone is kept


def test_pretraining_runs_a_number_of_steps_by_default(monkeypatch):
    from cellformer.model import _pretrain

    monkeypatch.setattr(_pretrain, "PRETRAIN_STEPS", 100)
    adata = make_counts(n_cells=300, n_genes=40)
    encoder = pretrain(adata, **SMALL)  # 285 training cells in batches of 32: 9 steps per epoch
    assert len(encoder.history) == 12  # ceil(100 / 9)


def test_cell_prediction_trains_the_pooled_cell_embedding():
    """With cell_prediction the pooled embedding (and its norm) must predict hidden values."""
    from cellformer.module._pretrain import MaskedExpressionModule

    adata = make_counts(n_cells=120, n_genes=40)
    x = torch.log1p(torch.as_tensor(adata.X.toarray()))
    for cell_prediction in (True, False):
        torch.manual_seed(0)
        backbone = TransformerModule(40, 1, adata.var_names, d_model=16, n_heads=2)
        backbone.tokenizer.fit(adata.X, "counts")
        module = MaskedExpressionModule(backbone, cell_prediction=cell_prediction)
        out = module(x, generator=torch.Generator().manual_seed(0))
        out["loss"].backward()
        assert ("cell_loss" in out) == cell_prediction
        if cell_prediction:
            torch.testing.assert_close(out["loss"], out["expression_loss"] + out["cell_loss"])
            assert backbone.norm.weight.grad.abs().sum() > 0  # the classifier reads this norm
        else:
            assert not backbone.norm.weight.requires_grad
    encoder = pretrain(adata, max_epochs=2, **SMALL)
    assert not torch.equal(encoder.state_dict["norm.weight"], torch.ones(16))  # transferred
    assert "heads.cell.weight" not in encoder.state_dict


@pytest.mark.slow
def test_fine_tuning_starts_from_the_encoder_freezes_and_learns(tmp_path):
    adata = make_counts(n_cells=300, n_genes=40)
    encoder = pretrain(adata, max_epochs=3, **SMALL)
    # a query with the genes in another order is aligned to the encoder's
    shuffled = adata[:, adata.var_names[::-1]].copy()
    # no linear path: the transformer alone must learn (a linear path solves this data alone)
    model = CellTransformer.from_pretrained(
        encoder, shuffled, "cell_type", trainable_layers=0, linear_path=False
    )
    assert list(model.adata.var_names) == encoder.genes
    state = model.module.state_dict()
    key = "embed.gene.embedding.weight"
    assert torch.equal(state[key], encoder.state_dict[key])
    before = {k: v.clone() for k, v in state.items()}
    model.train(max_epochs=4, enable_progress_bar=False, batch_size=32)
    after = model.module.state_dict()
    assert torch.equal(after[key], before[key])  # frozen embeddings
    assert torch.equal(after["tokenizer.median"], before["tokenizer.median"])  # kept statistics
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])  # the head learns
    with pytest.raises(ValueError, match="fixed by the pretrained encoder"):
        CellTransformer.from_pretrained(encoder, adata, "cell_type", d_model=32)

    tuned = CellTransformer.from_pretrained(
        encoder, adata, "cell_type", layerwise_lr_decay=0.5, linear_path=False
    )
    lrs = [group["lr"] for group in tuned.module.parameter_groups(1.0)]
    assert lrs == [0.25, 0.5, 1.0]  # embeddings, the one block, head and the rest
    # 15 epochs left it mid-way (0.73-0.83 by encoder); 30 reach >= 0.99 with any of them
    tuned.train(max_epochs=30, enable_progress_bar=False, batch_size=32)
    accuracy = (tuned.predict(adata) == adata.obs["cell_type"].astype(str).to_numpy()).mean()
    assert accuracy > 0.9  # majority: 1/3
    tuned.save(tmp_path / "tuned")
    loaded = CellTransformer.load(tmp_path / "tuned")
    np.testing.assert_allclose(
        loaded.predict(adata, soft=True).to_numpy(), tuned.predict(adata, soft=True).to_numpy(),
        rtol=1e-5, atol=1e-6,
    )  # fmt: skip


def _linear_classifier_logits(adata, idx, x, seed):
    """Logits of a LinearClassifier trained on the cells ``idx`` of ``adata``."""
    cells = adata[idx].copy()
    LinearClassifier.setup_anndata(cells, labels_key="cell_type")
    reference = LinearClassifier(cells)
    reference.train(seed=seed, enable_progress_bar=False, novelty=False)
    order = [reference.classes.index(c) for c in sorted(reference.classes)]
    with torch.no_grad():
        return reference.module.classify(reference.module.encode(x)).numpy()[:, order]


@pytest.mark.slow
def test_linear_path_starts_at_the_linear_classifier_and_can_be_switched_off():
    adata = make_counts(n_cells=150, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    assert model.classes == sorted(model.classes)
    idx = np.arange(0, 150, 2)
    state = torch.get_rng_state(), np.random.get_state()[1].copy()
    model._fit_training_statistics(idx)  # tokenizer statistics and the linear path
    # the nested, seeded fit leaves the random stream of the transformer's training alone
    assert torch.equal(torch.get_rng_state(), state[0])
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])
    x = torch.log1p(torch.as_tensor(adata.X.toarray()) / adata.X.sum(1).A * 1e4).float()
    model.module.eval()
    with torch.no_grad():
        logits = model.module.inference(x)["logits"].numpy()  # the head starts at zero
    # the transformer starts exactly at the baseline fit on the same cells
    np.testing.assert_allclose(logits, _linear_classifier_logits(adata, idx, x, 0), atol=1e-5)
    assert not model.module.linear.weight.requires_grad  # frozen: the transformer learns the rest

    # a transformer that only gets worse keeps the linear model (the weights before training);
    # after early stopping the linear path is refit on every labelled cell
    model.train(max_epochs=2, enable_progress_bar=False, plan_kwargs={"lr": 50.0}, seed=3)
    assert float(model.module.head[-1].weight.detach().abs().max()) == 0
    model.module.eval()
    with torch.no_grad():
        logits = model.module.inference(x)["logits"].numpy()
    expected = _linear_classifier_logits(adata, np.arange(150), x, 3)
    np.testing.assert_allclose(logits, expected, atol=1e-5)

    plain = CellTransformer(adata, d_model=16, n_heads=2, linear_path=False)
    assert plain.module.linear is None
    assert sum(p.numel() for p in plain.module.parameters()) == sum(
        p.numel() for p in model.module.parameters()
    ) - model.module.linear.weight.numel() - model.module.linear.bias.numel() - sum(
        p.numel() for p in model.module.aux_head.parameters()
    )


@pytest.mark.slow
def test_two_process_ddp_pretraining_and_training_end_with_the_same_weights_on_both_ranks(tmp_path):
    import socket
    import subprocess
    import sys
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    script = Path(__file__).parent / "ddp_pretrain.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
               f"--master_port={port}", "--master_addr=127.0.0.1", str(script), str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value, msg=key)
    assert len(ranks[0]["history"]) == 2
    # the losses were averaged over ranks: both report the same numbers
    assert ranks[0]["history"][-1]["pretrain_loss"] == pytest.approx(
        ranks[1]["history"][-1]["pretrain_loss"]
    )
    # supervised training: scvi-tools' distributed sampler shards cells, weights stay in sync
    for key, value in ranks[0]["classifier"].items():
        torch.testing.assert_close(
            ranks[1]["classifier"][key], value, msg=lambda m, k=key: f"{k}: {m}"
        )
    assert len(ranks[0]["classifier_history"]["validation_macro_f1"]) == 2


def test_mixed_precision_and_gradient_accumulation_pass_through_to_lightning():
    adata = make_counts(n_cells=150, n_genes=30)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2, linear_path=False)
    model.train(max_epochs=8, batch_size=16, precision="bf16-mixed", accumulate_grad_batches=2,
                enable_progress_bar=False)  # fmt: skip
    # 150 cells · 90% / 16 per batch = 9 batches → 5 optimiser steps per epoch with accumulation
    assert model.trainer.global_step == 8 * 5
    assert model.module.embed.gene.embedding.weight.dtype == torch.float32  # master weights
    probs = model.predict(adata, soft=True)
    assert np.isfinite(probs.to_numpy()).all()
    accuracy = (probs.idxmax(axis=1).to_numpy() == adata.obs["cell_type"].to_numpy()).mean()
    assert accuracy > 0.6  # 3 balanced types: it learned under bf16 autocast


@pytest.mark.parametrize("dense", [True, False])
def test_align_to_other_genes_fills_missing_genes_with_zero(dense):
    """The AnnData a pretrained encoder (or an scBERT checkpoint) is fine-tuned on: its genes
    in order, log-normalised, genes the data lack zero — dense input used to give NaN there."""
    import anndata as ad
    import scipy.sparse as sp

    from cellformer import pp

    counts = np.array([[3, 0, 5, 2], [0, 4, 1, 0], [7, 1, 0, 2]], dtype=np.float32)
    adata = ad.AnnData(counts if dense else sp.csr_matrix(counts))
    adata.var_names = ["g1", "g2", "g3", "g4"]
    adata.obs_names = ["a", "b", "c"]
    aligned = PretrainedEncoder.align_to(["g3", "gX", "g1"], adata)
    assert list(aligned.var_names) == ["g3", "gX", "g1"]
    assert list(aligned.obs_names) == ["a", "b", "c"]
    X = aligned.X.toarray()
    assert np.isfinite(X).all()
    lognorm = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)  # library over all genes
    np.testing.assert_allclose(X, np.c_[lognorm[:, 2], np.zeros(3), lognorm[:, 0]], rtol=1e-5)
    assert pp.check_expression(aligned) == "lognorm"
