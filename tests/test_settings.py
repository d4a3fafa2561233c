"""cf.settings: verbosity (log lines, progress bars, the CLI's summaries) and num_threads."""

import logging
import subprocess
import sys

import pytest
import torch
from helpers import make_counts

import cellformer as cf
from cellformer.model import LinearClassifier


@pytest.fixture
def restore_settings():
    level = cf.settings.logger.level
    threads = torch.get_num_threads()
    yield
    cf.settings.logger.setLevel(level)
    cf.settings._num_threads = None
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("value", "level"),
    [("debug", 10), ("INFO", 20), ("Warning", 30), ("error", 40), (logging.CRITICAL, 50)],
)
def test_verbosity_takes_names_and_levels(value, level, restore_settings):
    cf.settings.verbosity = value
    assert cf.settings.verbosity == level
    assert logging.getLogger("cellformer").getEffectiveLevel() == level
    assert cf.settings.shows_info == (level <= logging.INFO)


@pytest.mark.parametrize("value", ["loud", 0, 99, 2.5, None, True])
def test_bad_verbosity_is_a_parameter_error(value, restore_settings):
    before = cf.settings.verbosity
    with pytest.raises(cf.ParameterError, match="verbosity"):
        cf.settings.verbosity = value
    assert cf.settings.verbosity == before


def test_num_threads_sets_torchs_threads(restore_settings):
    cf.settings.num_threads = 1
    assert torch.get_num_threads() == 1 and cf.settings.num_threads == 1
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(cf.ParameterError, match="num_threads"):
            cf.settings.num_threads = bad
    assert cf.settings.num_threads == 1
    assert "num_threads=1" in repr(cf.settings)


def test_warning_verbosity_silences_info_lines_and_progress(restore_settings, caplog, capsys):
    adata = make_counts(n_cells=120, seed=3)
    LinearClassifier.setup_anndata(adata, labels_key="cell_type")
    with caplog.at_level(logging.DEBUG, logger="cellformer"):
        LinearClassifier(adata).train(max_epochs=2)
    assert any(r.levelno == logging.INFO for r in caplog.records)  # the default says things
    caplog.clear()
    cf.settings.verbosity = "warning"
    model = LinearClassifier(adata)
    model.train(max_epochs=2, enable_progress_bar=True)
    assert not [r for r in caplog.records if r.levelno < logging.WARNING]
    # no progress bar reached the terminal either
    assert "Epoch" not in capsys.readouterr().err
    # quiet_training (benchmarks) never lowers what the user set
    from cellformer._utils import quiet_training

    cf.settings.verbosity = "error"
    with quiet_training():
        assert cf.settings.verbosity == logging.ERROR
    assert cf.settings.verbosity == logging.ERROR


@pytest.mark.slow
def test_cli_at_warning_prints_nothing_but_warnings(tmp_path):
    """A whole `cellformer annotate` at --verbosity warning: no info lines, table or bar."""
    ref = make_counts(seed=1)
    query = make_counts(n_cells=60, seed=2)
    del query.obs["cell_type"]
    ref.write_h5ad(tmp_path / "ref.h5ad")
    query.write_h5ad(tmp_path / "q.h5ad")
    argv = ["annotate", "--reference", str(tmp_path / "ref.h5ad"), "--labels-key", "cell_type"]
    argv += ["--query", str(tmp_path / "q.h5ad"), "--model", "linear"]

    def run(*options, out):
        command = [sys.executable, "-m", "cellformer.cli", *options, *argv, "--out", out]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return result.stdout + result.stderr

    loud = run(out=str(tmp_path / "a.h5ad"))
    assert "INFO cellformer" in loud and "Predicted cell types" in loud
    quiet = run("--verbosity", "warning", out=str(tmp_path / "b.h5ad"))
    lines = [line for line in quiet.splitlines() if line.strip()]
    assert all("WARNING" in line or "Warning" in line for line in lines), quiet
    assert (tmp_path / "b.h5ad").exists()
