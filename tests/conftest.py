import logging
import warnings

import anndata as ad
import pytest
from helpers import make_counts


@pytest.fixture(autouse=True)
def _quiet_lightning():
    for name in ("lightning.pytorch", "lightning.fabric", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="lightning")
    # cellformer's logger has its own handler and does not propagate (as scvi-tools' does);
    # pytest's caplog listens on the root logger
    cf_logger = logging.getLogger("cellformer")
    cf_logger.propagate = True
    yield
    cf_logger.propagate = False


@pytest.fixture
def counts_adata() -> ad.AnnData:
    return make_counts()


@pytest.fixture(scope="session")
def pbmc68k():
    from cellformer.datasets import pbmc68k_reduced

    return pbmc68k_reduced()


@pytest.fixture
def offline_hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in offline mode (skips without huggingface_hub)."""
    constants = pytest.importorskip("huggingface_hub.constants")

    cache = tmp_path / "hf"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
