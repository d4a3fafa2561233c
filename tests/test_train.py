"""Training utilities: restoring the best epoch's weights, the class-balance option."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cellformer.train import RestoreBestWeights


def test_restore_best_weights_loads_the_best_epoch_back():
    module = nn.Linear(2, 1)
    pl_module = SimpleNamespace(module=module)
    callback = RestoreBestWeights("validation_loss", mode="min")
    losses = [1.0, 0.4, 0.7, 0.9]
    snapshots = []
    for epoch, loss in enumerate(losses):
        with torch.no_grad():
            module.weight.fill_(float(epoch))
        snapshots.append(module.weight.detach().clone())
        trainer = SimpleNamespace(
            sanity_checking=False,
            current_epoch=epoch,
            callback_metrics={"validation_loss": torch.tensor(loss)},
        )
        callback.on_validation_epoch_end(trainer, pl_module)
    callback.on_train_end(trainer, pl_module)
    assert callback.best_epoch == 1
    torch.testing.assert_close(module.weight, snapshots[1])


def test_restore_best_weights_ignores_sanity_check_and_missing_metric():
    module = nn.Linear(2, 1)
    before = module.weight.detach().clone()
    callback = RestoreBestWeights()
    pl_module = SimpleNamespace(module=module)
    sanity = SimpleNamespace(sanity_checking=True, current_epoch=0, callback_metrics={})
    callback.on_validation_epoch_end(sanity, pl_module)
    callback.on_train_end(sanity, pl_module)
    assert callback.best_epoch is None
    torch.testing.assert_close(module.weight, before)


def test_class_balance_switch_changes_the_loss():
    from cellformer.module import LinearModule

    module = LinearModule(n_input=3, n_labels=2)
    assert module.class_balance
    module.class_weights.copy_(torch.tensor([1.0, 9.0]))
    with torch.no_grad():
        module.linear.bias.copy_(torch.tensor([1.0, -1.0]))
    tensors = {"X": torch.ones(4, 3), "labels": torch.tensor([[0], [0], [0], [1]])}
    balanced = module(tensors)[2].loss
    module.class_balance = False
    plain = module(tensors)[2].loss
    assert balanced > plain  # the rare, badly predicted class counts 9 times


def test_restore_best_weights_keeps_the_starting_weights_when_no_epoch_beats_them():
    from helpers import make_counts

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=90, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    model = CellTransformer(adata, d_model=16, n_heads=2)
    model.train(max_epochs=3, enable_progress_bar=False, batch_size=32)
    best = [c for c in model.trainer.callbacks if isinstance(c, RestoreBestWeights)][0]
    assert best.initial and best.best_epoch is not None


@pytest.mark.slow
def test_supervised_training_resumes_from_a_lightning_checkpoint(tmp_path):
    """``train(ckpt_path=...)`` continues a run: the step count goes on from the checkpoint."""
    from helpers import make_counts
    from lightning.pytorch.callbacks import ModelCheckpoint

    from cellformer.model import CellTransformer

    adata = make_counts(n_cells=96, n_genes=20)
    CellTransformer.setup_anndata(adata, labels_key="cell_type")
    steps_per_epoch = 3  # 96 cells, batch 32, no validation split

    first = CellTransformer(adata, d_model=16, n_heads=2)
    checkpoint = ModelCheckpoint(dirpath=tmp_path, save_last=True)
    first.train(
        max_epochs=2,
        batch_size=32,
        validation_size=0.0,
        enable_progress_bar=False,
        enable_checkpointing=True,
        callbacks=[checkpoint],
        default_root_dir=str(tmp_path),  # scvi-tools' own checkpoint folder goes here too
    )
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["epoch"] == 1 and saved["global_step"] == 2 * steps_per_epoch

    state = saved["state_dict"]
    trained = [n for n, p in first.module.named_parameters() if p.requires_grad]
    assert trained and all(f"module.{n}" in state for n in trained)

    def resume(max_epochs):
        model = CellTransformer(adata, d_model=16, n_heads=2, seed=1)  # other initial weights
        model.train(
            max_epochs=max_epochs,
            batch_size=32,
            validation_size=0.0,
            enable_progress_bar=False,
            ckpt_path=str(tmp_path / "last.ckpt"),
        )
        return model, {n: p.detach() for n, p in model.module.named_parameters()}

    # resumed at its end: no step runs and the weights are the checkpoint's, not the new init
    done, weights = resume(2)
    assert done.trainer.global_step == 2 * steps_per_epoch
    for name in trained:
        torch.testing.assert_close(weights[name], state[f"module.{name}"])
    # two epochs more: the step count goes on from the checkpoint and the weights move
    more, weights = resume(4)
    assert more.trainer.global_step == 4 * steps_per_epoch
    assert any(not torch.allclose(weights[n], state[f"module.{n}"]) for n in trained)


def test_train_with_a_seed_leaves_the_callers_random_state_alone():
    import random

    from helpers import make_counts

    from cellformer.model import CellTransformer, LinearClassifier

    adata = make_counts(n_cells=90, n_genes=20)
    for cls, kwargs in ((LinearClassifier, {}), (CellTransformer, {"d_model": 16, "n_heads": 2})):
        cls.setup_anndata(adata, labels_key="cell_type")
        model = cls(adata, **kwargs)
        torch.manual_seed(123)
        np.random.seed(123)
        random.seed(123)
        expected = torch.rand(3), np.random.rand(3), random.random()
        torch.manual_seed(123)
        np.random.seed(123)
        random.seed(123)
        model.train(max_epochs=2, enable_progress_bar=False, seed=0)
        assert torch.equal(torch.rand(3), expected[0])
        np.testing.assert_array_equal(np.random.rand(3), expected[1])
        assert random.random() == expected[2]
