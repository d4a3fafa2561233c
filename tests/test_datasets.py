import hashlib
import io
import socket
import tarfile
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from cellformer import datasets
from cellformer.datasets import _download
from cellformer.datasets._download import DownloadError, RemoteFile


class LocalServer:
    """Serves in-memory files on 127.0.0.1 and counts requests per path."""

    def __init__(self, files: dict[str, bytes]):
        self.files = files
        self.requests: Counter = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                name = self.path.lstrip("/")
                server.requests[name] += 1
                if name not in server.files:
                    self.send_error(404)
                    return
                body = server.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tenx_archive(barcodes, genes, counts: np.ndarray) -> bytes:
    """A tar.gz in the layout of 10x's pbmc3k_filtered_gene_bc_matrices (Cell Ranger 1.1)."""
    mtx = io.BytesIO()
    scipy.io.mmwrite(mtx, sp.coo_matrix(counts.T))  # genes × cells
    members = {
        "filtered_gene_bc_matrices/hg19/matrix.mtx": mtx.getvalue(),
        "filtered_gene_bc_matrices/hg19/genes.tsv": "".join(
            f"ENSG{i:011d}\t{g}\n" for i, g in enumerate(genes)
        ).encode(),
        "filtered_gene_bc_matrices/hg19/barcodes.tsv": "".join(f"{b}\n" for b in barcodes).encode(),
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("CELLFORMER_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def register(monkeypatch, name: str, url: str, known_hash: str | None):
    monkeypatch.setitem(
        _download.REGISTRY,
        name,
        RemoteFile(url=url, known_hash=known_hash, description="test file"),
    )


def test_data_dir_env_override(data_dir):
    assert datasets.data_dir() == data_dir
    assert data_dir.is_dir()


def test_first_download_then_cache_hit(data_dir, monkeypatch):
    payload = b"hello cellformer" * 100
    with LocalServer({"f.bin": payload}) as srv:
        register(monkeypatch, "f.bin", f"{srv.url}/f.bin", sha256(payload))
        path = datasets.fetch("f.bin")
        assert path.read_bytes() == payload
        assert path.parent == data_dir
        assert srv.requests["f.bin"] == 1
        again = datasets.fetch("f.bin")
        assert again == path
        assert srv.requests["f.bin"] == 1  # served from the cache: no second request


def test_corrupted_download_names_file_and_hash(data_dir, monkeypatch):
    good = b"the real file"
    with LocalServer({"f.bin": b"a corrupted file"}) as srv:
        register(monkeypatch, "f.bin", f"{srv.url}/f.bin", sha256(good))
        with pytest.raises(DownloadError) as info:
            datasets.fetch("f.bin")
    msg = str(info.value)
    assert "'f.bin'" in msg
    assert sha256(good) in msg
    assert not (data_dir / "f.bin").exists()


def test_unreachable_host_says_how_to_place_file(data_dir, monkeypatch):
    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/f.bin"
    register(monkeypatch, "f.bin", url, None)
    with pytest.raises(DownloadError) as info:
        datasets.fetch("f.bin")
    msg = str(info.value)
    assert url in msg
    assert str(data_dir / "f.bin") in msg
    assert "by hand" in msg


def test_file_placed_by_hand_is_used_offline(data_dir, monkeypatch):
    data_dir.mkdir(parents=True)
    (data_dir / "f.bin").write_bytes(b"placed by hand")
    register(monkeypatch, "f.bin", "http://127.0.0.1:9/f.bin", sha256(b"placed by hand"))
    assert datasets.fetch("f.bin").read_bytes() == b"placed by hand"


def test_unknown_file_name():
    with pytest.raises(KeyError, match="Known files"):
        datasets.fetch("nope.h5ad")


def test_pbmc3k_downloads_joins_and_normalises(data_dir, monkeypatch, tmp_path):
    rng = np.random.default_rng(0)
    barcodes = [f"AAAC{i:04d}-1" for i in range(12)]
    genes = ["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY"]
    counts = rng.poisson(3, size=(12, 5)).astype(np.float32)
    counts[:, 0] += 1
    archive = tenx_archive(barcodes, genes, counts)
    # the processed file keeps 10 of the 12 cells, in another order, with labels in 'louvain'
    kept = barcodes[::-1][:10]
    processed = ad.AnnData(
        X=np.zeros((10, 2), dtype=np.float32),
        obs=pd.DataFrame({"louvain": pd.Categorical(["B cells", "NK cells"] * 5)}, index=kept),
    )
    processed.write_h5ad(tmp_path / "p.h5ad")
    proc_bytes = (tmp_path / "p.h5ad").read_bytes()
    with LocalServer({"pbmc.tar.gz": archive, "pbmc3k.h5ad": proc_bytes}) as srv:
        register(
            monkeypatch,
            "pbmc3k_filtered_gene_bc_matrices.tar.gz",
            f"{srv.url}/pbmc.tar.gz",
            sha256(archive),
        )
        register(monkeypatch, "pbmc3k_processed.h5ad", f"{srv.url}/pbmc3k.h5ad", sha256(proc_bytes))
        adata = datasets.pbmc3k()
        again = datasets.pbmc3k()
        assert srv.requests["pbmc.tar.gz"] == 1 and srv.requests["pbmc3k.h5ad"] == 1
    assert adata.shape == (10, 5)
    assert list(adata.obs_names) == kept
    assert list(adata.var_names) == genes
    assert adata.obs["cell_type"].tolist() == ["B cells", "NK cells"] * 5
    order = [barcodes.index(b) for b in kept]
    np.testing.assert_array_equal(adata.layers["counts"].toarray(), counts[order])
    expected = np.log1p(counts[order] / counts[order].sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(adata.X.toarray(), expected, rtol=1e-5)
    np.testing.assert_array_equal(again.X.toarray(), adata.X.toarray())


def test_pbmc68k_reduced_is_lognormalised_with_cell_types():
    adata = datasets.pbmc68k_reduced()
    assert adata.shape == (700, 765)
    assert adata.obs["cell_type"].nunique() == 10
    assert adata.X.min() >= 0
    # log1p of counts per 10,000: expm1 sums to ~1e4 per cell over all genes; here only 765 genes
    assert np.all(np.expm1(adata.X.toarray()).sum(1) < 1.01e4)
    assert "X_pca" not in adata.obsm and "X_umap" not in adata.obsm


def test_load_missing_file_and_wrong_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match="No such file"):
        datasets.load(tmp_path / "missing.h5ad")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match="not an .h5ad"):
        datasets.load(tmp_path / "x.csv")


def test_damaged_cached_file_without_published_hash_is_fetched_again(data_dir, monkeypatch):
    payload = b"the file as first downloaded" * 50
    with LocalServer({"f.bin": payload}) as srv:
        register(monkeypatch, "f.bin", f"{srv.url}/f.bin", None)
        path = datasets.fetch("f.bin")
        assert (data_dir / "f.bin.sha256").read_text() == sha256(payload)
        path.write_bytes(payload[:100])  # truncated, e.g. by a full disk
        assert datasets.fetch("f.bin").read_bytes() == payload
        assert srv.requests["f.bin"] == 2
        assert datasets.fetch("f.bin").read_bytes() == payload
        assert srv.requests["f.bin"] == 2  # intact: the cache serves it


def test_damaged_cached_file_with_known_hash_is_fetched_again(data_dir, monkeypatch):
    payload = b"a published file"
    data_dir.mkdir(parents=True)
    (data_dir / "f.bin").write_bytes(b"a published fi")  # a partial copy
    with LocalServer({"f.bin": payload}) as srv:
        register(monkeypatch, "f.bin", f"{srv.url}/f.bin", sha256(payload))
        assert datasets.fetch("f.bin").read_bytes() == payload
        assert srv.requests["f.bin"] == 1


def test_published_celltypist_model_by_name(data_dir, monkeypatch, tmp_path, capsys):
    """A published CellTypist model named without a path is downloaded once, then cached."""
    pytest.importorskip("celltypist")
    import pickle

    from helpers import make_counts
    from sklearn.linear_model import SGDClassifier
    from sklearn.preprocessing import StandardScaler

    import cellformer as cf
    from cellformer.cli import main

    data = make_counts()
    X = np.log1p(data.X.toarray())
    scaler = StandardScaler().fit(X)
    clf = SGDClassifier(loss="log_loss", random_state=0).fit(
        scaler.transform(X), data.obs["cell_type"].astype(str)
    )
    clf.features = np.asarray(data.var_names)
    blob = pickle.dumps({"Model": clf, "Scaler_": scaler, "description": {}})
    monkeypatch.chdir(tmp_path)  # no local file of that name
    with LocalServer({"Immune_All_Low.pkl": blob}) as srv:
        register(monkeypatch, "Immune_All_Low.pkl", f"{srv.url}/Immune_All_Low.pkl", sha256(blob))
        annotated = cf.tl.annotate(data.copy(), model="Immune_All_Low.pkl", progress=False)
        assert srv.requests["Immune_All_Low.pkl"] == 1
    assert (data_dir / "Immune_All_Low.pkl").is_file()
    assert np.mean(annotated.obs["cellformer_prediction"] == data.obs["cell_type"]) > 0.9
    # the server is gone: the cached copy is used, from Python and the command line
    cf.tl.annotate(data.copy(), model="Immune_All_Low.pkl", progress=False)
    data.write_h5ad(tmp_path / "q.h5ad")
    code = main(
        ["annotate", "--model", "Immune_All_Low.pkl", "--query", "q.h5ad", "--out", "o.h5ad"]
    )
    assert code == 0 and (tmp_path / "o.h5ad").is_file()


def test_published_model_offline_and_not_cached_is_one_line(
    data_dir, monkeypatch, tmp_path, capsys
):
    from helpers import make_counts

    from cellformer.cli import main

    with socket.socket() as s:  # a port on which nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    register(monkeypatch, "Immune_All_Low.pkl", f"http://127.0.0.1:{port}/Immune_All_Low.pkl", None)
    monkeypatch.chdir(tmp_path)
    make_counts().write_h5ad("q.h5ad")
    code = main(
        ["annotate", "--model", "Immune_All_Low.pkl", "--query", "q.h5ad", "--out", "o.h5ad"]
    )
    out = capsys.readouterr().out
    assert code == 2 and "by hand" in out and "Immune_All_Low.pkl" in out
    assert "Traceback" not in out
