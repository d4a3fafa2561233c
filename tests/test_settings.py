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


def test_predict_and_the_latent_show_one_progress_bar_over_their_chunks(monkeypatch):
    import contextlib

    from helpers import train_linear

    from cellformer.model.base import _inference

    calls = []
    real = _inference.progress_bar

    @contextlib.contextmanager
    def recording(description, total, enabled=True):
        steps = []
        with real(description, total, enabled) as advance:
            yield lambda: (steps.append(1), advance())
        calls.append((description, total, enabled, len(steps)))

    adata = make_counts(n_cells=249, n_genes=21)
    model = train_linear(adata)
    model.inference_chunk_values = 100 * adata.n_vars  # chunks of 100 cells, as batch_size asks
    monkeypatch.setattr(_inference, "progress_bar", recording)
    model.predict(adata, batch_size=100, key_prefix=None)
    assert calls == [("predicting", 3, True, 3)]  # 249 cells in chunks of 100
    calls.clear()
    model.predict(adata, batch_size=100, key_prefix=None, progress=False)
    assert calls == [("", 3, False, 3)]
    calls.clear()
    model.get_latent_representation(adata, batch_size=100, key_prefix=None)
    assert calls == [("latent representation", 3, True, 3)]


def test_a_progress_bar_is_drawn_only_when_asked_with_work_to_show_and_info_shown(
    monkeypatch, restore_settings
):
    import rich.progress

    from cellformer._core.progress import progress_bar

    drawn = []

    class Recorder:
        def __init__(self, *columns, **options):
            self.completed = 0

        def __enter__(self):
            drawn.append(self)
            return self

        def __exit__(self, *exc):
            return False

        def add_task(self, description, total):
            self.description, self.total = description, total
            return 0

        def advance(self, task):
            self.completed += 1

    monkeypatch.setattr(rich.progress, "Progress", Recorder)
    cf.settings.verbosity = "info"
    for enabled, total in ((False, 5), (True, 1)):
        with progress_bar("x", total, enabled) as advance:
            advance()
    assert drawn == []  # off, or a single step
    with progress_bar("predicting", 4) as advance:
        for _ in range(4):
            advance()
    assert [(d.description, d.total, d.completed) for d in drawn] == [("predicting", 4, 4)]
    cf.settings.verbosity = "warning"
    with progress_bar("predicting", 4) as advance:
        advance()
    assert len(drawn) == 1  # nothing drawn above info
