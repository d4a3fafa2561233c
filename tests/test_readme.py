"""Every Python block of README.md runs, in order, in one namespace (with few epochs)."""

import re
import time
from pathlib import Path

import numpy as np
import pytest

import cellformer as cf

README = Path(__file__).resolve().parents[1] / "README.md"
SKIP = "<!-- readme-test: skip"


def python_blocks() -> list[str]:
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", text, re.S):
        if not match.group("before").startswith(SKIP):
            blocks.append(match.group("code"))
    return blocks


def test_readme_has_the_blocks_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) >= 7
    assert any("cf.tl.annotate" in b for b in blocks)
    # only what cannot run offline may be skipped: the Census download, published checkpoints
    reasons = re.findall(rf"{SKIP} \((.*?)\) -->", README.read_text())
    assert len(reasons) == README.read_text().count(SKIP)
    assert set(reasons) <= {
        "downloads from CELLxGENE Census",
        "needs the published checkpoint files",
    }, reasons
    assert len(reasons) <= 2


@pytest.fixture
def fast_training(monkeypatch):
    """Cap epochs, MC samples and learning-curve folds: the README's calls as written, shorter."""
    from cellformer.model import (
        CellformerModel,
        CellTransformer,
        LinearClassifier,
        _from_pretrained,
    )
    from cellformer.model.base import _predict

    for cls in (CellformerModel, LinearClassifier, CellTransformer):
        train = cls.__dict__["train"]

        def short_train(self, max_epochs=None, _train=train, **kwargs):
            return _train(self, max_epochs=min(max_epochs or 2, 2), **kwargs)

        monkeypatch.setattr(cls, "train", short_train)
    passes = _predict.predictive_passes

    def fewer_samples(model, adata, layer, batch_size, mc_samples, mc_dropout, **options):
        mc_samples = None if mc_samples is None else min(int(mc_samples), 2)
        return passes(model, adata, layer, batch_size, mc_samples, mc_dropout, **options)

    monkeypatch.setattr(_predict, "predictive_passes", fewer_samples)
    pretrain = _from_pretrained.pretrain

    def short_pretrain(*args, **kwargs):
        kwargs["max_epochs"] = 1
        return pretrain(*args, **kwargs)

    monkeypatch.setattr(_from_pretrained, "pretrain", short_pretrain)
    curve = cf.bench.learning_curve

    def two_fold_curve(*args, split=None, **kwargs):
        return curve(*args, split=cf.bench.StratifiedKFold(2) if split is None else split, **kwargs)

    monkeypatch.setattr(cf.bench, "learning_curve", two_fold_curve)


@pytest.mark.slow
def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch, fast_training):
    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    # the files the "Annotate your own data" block reads: a labelled reference and a query
    # with another gene panel, from the embedded data
    data = cf.datasets.pbmc68k_reduced()
    rng = np.random.default_rng(0)
    cells = rng.permutation(data.n_obs)
    data[np.sort(cells[:400]), :600].copy().write_h5ad("reference.h5ad")
    query = data[np.sort(cells[400:]), 400:].copy()  # 200 of the reference's 600 genes
    del query.obs["cell_type"]
    query.write_h5ad("my_cells.h5ad")
    namespace: dict = {}
    for i, code in enumerate(python_blocks()):
        start = time.perf_counter()
        try:
            exec(compile(code, f"README.md python block {i + 1}", "exec"), namespace)
        except Exception as err:
            raise AssertionError(f"README python block {i + 1} fails: {err!r}\n{code}") from err
        print(f"README block {i + 1}: {time.perf_counter() - start:.1f} s")
    annotated = namespace["query"]  # annotated again by the saved model, which it names
    assert annotated.uns["cellformer"]["model_dir"] == "my_model/"
    assert annotated.uns["cellformer"]["n_model_genes"] == 200  # trained on the shared genes
    assert "cellformer_prediction" in annotated.obs and "X_cellformer" in annotated.obsm
