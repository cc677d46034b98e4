"""IDX files that arrive by themselves: download from mirrors into ``$FPN_JAX_HOME/data``, verified.

A local HTTP server on 127.0.0.1 plays the mirrors. The first segment of a URL's path says how
it behaves: ``good/`` serves the files, ``corrupt/`` serves them with flipped bytes (same
length), ``cut/`` announces the full Content-Length and closes after half the body,
``missing/`` answers 404; a closed port refuses connections. The shared MNIST files are served
once with the real checksum table (their gzip wrappers differ from the mirrors', so they pass
through the content MD5s); the other cases serve small generated IDX files with a table made
for them, which keeps each test well under a second.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

from fpn_jax import data
from fpn_jax.data import DatasetUnavailableError, DownloadError, RemoteFile, download, load_fashion_mnist, load_mnist
from fpn_jax.data import mnist as mnist_source

SHARED_MNIST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
GZ_NAMES = [f"{name}.gz" for name in data.MNIST_FILES.values()]
HAVE_SHARED = all((SHARED_MNIST / name).is_file() for name in GZ_NAMES)
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"shared MNIST IDX files not found in {SHARED_MNIST}")


# --------------------------------------------------------------------------- the local mirrors


class _Mirrors(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []

    def url(self, behaviour: str) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{behaviour}/"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Mirrors

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.requests.append(self.path)
        behaviour, _, name = self.path.lstrip("/").partition("/")
        body = self.server.files.get(name)
        if body is None or behaviour == "missing":
            self.send_error(404, "Not Found")
            return
        if behaviour == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1 :]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if behaviour == "cut":  # the connection drops halfway
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    mirrors = _Mirrors()
    thread = threading.Thread(target=mirrors.serve_forever, daemon=True)
    thread.start()
    yield mirrors
    mirrors.shutdown()
    mirrors.server_close()


@pytest.fixture
def mirrors(server):
    server.files.clear()
    server.requests.clear()
    return server


@pytest.fixture
def home(tmp_path, monkeypatch):
    """``$FPN_JAX_HOME`` in a temporary folder (never the user's cache)."""
    root = tmp_path / "fpn_jax_home"
    monkeypatch.setenv("FPN_JAX_HOME", str(root))
    return root


@pytest.fixture
def refused():
    """A URL on a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


# --------------------------------------------------------------------------- generated IDX files


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def generated(seed: int = 0, n_train: int = 40, n_test: int = 20) -> tuple[dict[str, bytes], dict[str, np.ndarray]]:
    """Four small MNIST-like gzipped IDX files by served name, and their arrays by role."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    files = {f"{data.MNIST_FILES[role]}.gz": gzip.compress(_idx(a), mtime=0) for role, a in arrays.items()}
    return files, arrays


def use_table(monkeypatch, name: str, files: dict[str, bytes], mirrors: list[str]) -> data.IDXDataset:
    """Points ``IDX_DATASETS[name]`` at ``mirrors`` with the MD5s and sizes of ``files``."""
    spec = mnist_source.IDX_DATASETS[name]
    table = {
        role: RemoteFile(f"{file_name}.gz", md5=hashlib.md5(files[f"{file_name}.gz"]).hexdigest(),
                         size=len(files[f"{file_name}.gz"]))
        for role, file_name in data.MNIST_FILES.items()
    }
    spec = dataclasses.replace(spec, files=table, mirrors=tuple(mirrors))
    monkeypatch.setitem(mnist_source.IDX_DATASETS, name, spec)
    return spec


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".")) if folder.exists() else []


def no_tensorflow(monkeypatch):
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: False)


# --------------------------------------------------------------------------- the real files, real checksums


def test_the_checksum_table_is_torchvisions_and_tfds():
    """The published MD5s (torchvision), sizes and SHA-256 (tensorflow-datasets) of the mirrors' files."""
    mnist = data.IDX_DATASETS["mnist"]
    assert mnist.files["train_images"].md5 == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert mnist.files["test_labels"].md5 == "ec29112dd5afa0611ce80d1b7f02629c"
    assert mnist.files["train_images"].size == 9_912_422
    assert mnist.mirrors[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"
    assert "http://yann.lecun.com/exdb/mnist/" in mnist.mirrors
    fashion = data.IDX_DATASETS["fashion_mnist"]
    assert fashion.files["train_images"].md5 == "8d4fb7e6c68d591d4c3dfef9ec88bf0d"
    assert fashion.files["test_labels"].md5 == "bb300cfdad3c16e7a12a480ee83cd310"
    assert fashion.mirrors[0] == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    assert len(mnist.mirrors) >= 2 and len(fashion.mirrors) >= 2
    for spec in (mnist, fashion):
        assert [f.name for f in spec.files.values()] == GZ_NAMES
        assert spec.cache_dir == download.data_home() / spec.name


@needs_shared
def test_download_real_mnist_verified_then_reused(mirrors, home, capsys):
    """`load_mnist()` with nothing cached: fetched, verified with the real table, cached; then no requests."""
    mirrors.files = {name: (SHARED_MNIST / name).read_bytes() for name in GZ_NAMES}
    url = mirrors.url("good")
    ds = load_mnist(mirrors=[url])
    cache = home / "data" / "mnist"
    assert sorted(p.name for p in cache.iterdir()) == sorted(GZ_NAMES)  # no temporary file left
    for name in GZ_NAMES:
        assert (cache / name).read_bytes() == mirrors.files[name]
    assert len(ds.train) == 50_000 and len(ds.validation) == 10_000 and len(ds.test) == 10_000
    assert np.bincount(ds.test.labels, minlength=10).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                                                   1009]
    assert sorted(mirrors.requests) == sorted(f"/good/{name}" for name in GZ_NAMES)
    assert f"downloading {url}train-images-idx3-ubyte.gz" in capsys.readouterr().err
    # Cached: nothing is requested again.
    assert data.download_idx_dataset("mnist", mirrors=[url]) == cache
    assert len(mirrors.requests) == 4


@needs_shared
def test_real_table_rejects_a_corrupted_copy_and_takes_the_next_mirror(mirrors, home):
    mirrors.files = {name: (SHARED_MNIST / name).read_bytes() for name in GZ_NAMES[1:]}  # no big file: fast
    spec = data.IDX_DATASETS["mnist"]
    folder = home / "labels"
    download.fetch([spec.files["train_labels"]], folder, [mirrors.url("corrupt"), mirrors.url("good")],
                   progress=False)
    assert mirrors.requests == ["/corrupt/train-labels-idx1-ubyte.gz", "/good/train-labels-idx1-ubyte.gz"]
    assert (folder / "train-labels-idx1-ubyte.gz").read_bytes() == mirrors.files["train-labels-idx1-ubyte.gz"]
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download.fetch([spec.files["test_labels"]], folder, [mirrors.url("corrupt")], progress=False)
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists() and leftovers(folder) == []
    (url, reason), = info.value.attempts
    assert url == mirrors.url("corrupt") + "t10k-labels-idx1-ubyte.gz"
    assert "MD5" in reason and "ec29112dd5afa0611ce80d1b7f02629c" in reason


# --------------------------------------------------------------------------- generated files


def test_download_then_cache_reuse(mirrors, home, monkeypatch):
    files, arrays = generated()
    mirrors.files = files
    use_table(monkeypatch, "mnist", files, [mirrors.url("good")])
    first = load_mnist(validation_size=10, progress=False)
    assert len(mirrors.requests) == 4 and len(first.train) == 30
    np.testing.assert_array_equal(first.test.labels, arrays["test_labels"])
    second = load_mnist(validation_size=10, progress=False)
    assert len(mirrors.requests) == 4  # the cache is complete: no request
    np.testing.assert_array_equal(second.train.inputs, first.train.inputs)
    # A partial cache: only the missing file is fetched.
    (home / "data" / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    load_mnist(validation_size=10, progress=False)
    assert mirrors.requests[4:] == ["/good/t10k-images-idx3-ubyte.gz"]
    # source="idx" reads the cache and never downloads; an uncompressed copy there is used as it is.
    raw_labels = gzip.decompress(files["t10k-labels-idx1-ubyte.gz"])
    (home / "data" / "mnist" / "t10k-labels-idx1-ubyte").write_bytes(raw_labels)
    load_mnist(source="idx", validation_size=10)
    assert len(mirrors.requests) == 5


def test_corrupted_file_next_mirror_or_clear_error(mirrors, home, monkeypatch):
    files, _ = generated()
    mirrors.files = files
    use_table(monkeypatch, "mnist", files, [mirrors.url("corrupt"), mirrors.url("good")])
    load_mnist(validation_size=10, progress=False)
    assert mirrors.requests[:2] == ["/corrupt/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]
    assert leftovers(home / "data" / "mnist") == []

    no_tensorflow(monkeypatch)
    use_table(monkeypatch, "fashion_mnist", files, [mirrors.url("corrupt")])
    with pytest.raises(DownloadError, match=r"(?s)no mirror gave a good copy of train-images.*checksum mismatch: MD5"):
        load_fashion_mnist(progress=False)
    folder = home / "data" / "fashion_mnist"
    assert list(folder.iterdir()) == []  # nothing under the final name, no temporary file


def test_dead_first_mirrors_then_a_good_one(mirrors, home, monkeypatch, refused):
    files, arrays = generated()
    mirrors.files = files
    use_table(monkeypatch, "mnist", files, [refused, mirrors.url("missing"), mirrors.url("good")])
    ds = load_mnist(validation_size=10, progress=False)
    np.testing.assert_array_equal(ds.test.labels, arrays["test_labels"])
    assert mirrors.requests[:2] == ["/missing/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]


def test_interrupted_transfer_is_not_kept(mirrors, home, monkeypatch):
    files, _ = generated(n_train=400)
    mirrors.files = files
    use_table(monkeypatch, "mnist", files, [mirrors.url("cut"), mirrors.url("good")])
    load_mnist(validation_size=10, progress=False)
    assert mirrors.requests[:2] == ["/cut/train-images-idx3-ubyte.gz", "/good/train-images-idx3-ubyte.gz"]
    # Only the interrupting mirror: a clear error, and the cache stays clean.
    no_tensorflow(monkeypatch)
    use_table(monkeypatch, "fashion_mnist", files, [mirrors.url("cut")])
    size = len(files["train-images-idx3-ubyte.gz"])
    with pytest.raises(DownloadError, match=f"transfer interrupted: received {size // 2} of the {size} bytes"):
        load_fashion_mnist(progress=False)
    assert list((home / "data" / "fashion_mnist").iterdir()) == []
    assert not (home / "data" / "fashion_mnist" / "train-images-idx3-ubyte.gz").exists()


def test_nothing_reachable_says_what_to_do(mirrors, home, monkeypatch, refused):
    files, _ = generated()
    mirrors.files = files
    no_tensorflow(monkeypatch)
    use_table(monkeypatch, "mnist", files, [refused, mirrors.url("missing")])
    with pytest.raises(DownloadError) as info:
        load_mnist(progress=False)
    message = str(info.value)
    assert isinstance(info.value, DatasetUnavailableError)
    assert f"{refused}train-images-idx3-ubyte.gz: unreachable" in message and "Connection refused" in message
    assert f"{mirrors.url('missing')}train-images-idx3-ubyte.gz: HTTP error 404" in message
    assert "--data-dir" in message and "tensorflow-datasets" in message and "source='tfds'" in message
    assert "pip install tensorflow-cpu" in message and str(home / "data" / "mnist") in message
    assert [url for url, _ in info.value.attempts] == [refused + GZ_NAMES[0], mirrors.url("missing") + GZ_NAMES[0]]
    assert list((home / "data" / "mnist").iterdir()) == []


def test_command_line_offline_names_data_dir_and_tfds(mirrors, home, monkeypatch, refused, tmp_path, capsys):
    """`python experiments/mnist.py` as a new user offline would run it: exit 2 and what to do, no traceback."""
    import importlib.util

    files, _ = generated()
    no_tensorflow(monkeypatch)
    use_table(monkeypatch, "fashion_mnist", files, [refused])
    spec = importlib.util.spec_from_file_location(
        "mnist_command_line", Path(__file__).resolve().parents[1] / "experiments" / "mnist.py"
    )
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.main(["--quick", "--dataset", "fashion_mnist", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "error: Could not download Fashion-MNIST" in err and "--data-dir" in err and "tensorflow-datasets" in err


def test_download_fails_then_tfds_when_tensorflow_is_installed(mirrors, home, monkeypatch, refused):
    tfds = pytest.importorskip("tensorflow_datasets")
    files, _ = generated()
    use_table(monkeypatch, "mnist", files, [refused])
    monkeypatch.setattr(mnist_source, "_tensorflow_available", lambda: True)
    images, labels = np.zeros((12, 28, 28, 1), np.uint8), np.arange(12) % 10
    monkeypatch.setattr(tfds, "load", lambda name, **kw: [(images, labels), (images[:4], labels[:4])])
    ds = load_mnist(validation_size=2, progress=False)  # "auto": the download fails, tfds provides
    assert len(ds.train) == 10 and len(ds.test) == 4

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to reach storage.googleapis.com")

    monkeypatch.setattr(tfds, "load", offline)
    with pytest.raises(DatasetUnavailableError) as info:
        load_mnist(progress=False)
    message = str(info.value)
    assert "Connection refused" in message and "Failed to reach storage.googleapis.com" in message
    assert "--data-dir" in message
    # source="download" never falls back to tfds.
    with pytest.raises(DownloadError):
        load_mnist(source="download", progress=False)


def test_fashion_mnist_downloads_into_its_own_folder(mirrors, home, monkeypatch, tmp_path):
    files, arrays = generated(seed=3)
    mirrors.files = files
    use_table(monkeypatch, "fashion_mnist", files, [mirrors.url("good").rstrip("/")])  # no trailing slash
    ds = load_fashion_mnist(validation_size=10, progress=False)
    assert ds.context_names == data.FASHION_MNIST_CLASSES
    np.testing.assert_array_equal(ds.test.inputs[..., 0], arrays["test_images"] / np.float32(255))
    assert sorted(p.name for p in (home / "data" / "fashion_mnist").iterdir()) == sorted(GZ_NAMES)
    assert not (home / "data" / "mnist").exists()
    # source="download" with a data_dir fills that folder instead of the cache.
    load_fashion_mnist(tmp_path / "mine", source="download", validation_size=10, progress=False)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == sorted(GZ_NAMES)


def test_interrupt_during_download_leaves_no_temporary_file(mirrors, home, monkeypatch):
    files, _ = generated()
    mirrors.files = files
    use_table(monkeypatch, "mnist", files, [mirrors.url("good")])

    def interrupted(path, file):
        raise KeyboardInterrupt

    monkeypatch.setattr(download, "verify", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_mnist(progress=False)
    assert list((home / "data" / "mnist").iterdir()) == []


# --------------------------------------------------------------------------- verify, RemoteFile, home


def test_verify_accepts_the_same_content_recompressed(tmp_path):
    raw = _idx(np.arange(100, dtype=np.uint8))
    served, other = gzip.compress(raw, compresslevel=1, mtime=0), gzip.compress(raw, compresslevel=9, mtime=5)
    assert served != other
    file = RemoteFile("x.gz", md5=hashlib.md5(served).hexdigest(), size=len(served),
                      raw_md5=hashlib.md5(raw).hexdigest(), raw_size=len(raw))
    (tmp_path / "served.gz").write_bytes(served)
    (tmp_path / "other.gz").write_bytes(other)
    (tmp_path / "bad.gz").write_bytes(gzip.compress(raw[:-1]))
    (tmp_path / "junk.gz").write_bytes(b"not gzip")
    assert download.verify(tmp_path / "served.gz", file) is None
    assert download.verify(tmp_path / "other.gz", file) is None
    assert "its content has MD5" in download.verify(tmp_path / "bad.gz", file)
    assert "not a readable gzip file" in download.verify(tmp_path / "junk.gz", file)
    sha = RemoteFile("x.gz", sha256=hashlib.sha256(served).hexdigest())
    assert download.verify(tmp_path / "served.gz", sha) is None
    assert "SHA-256" in download.verify(tmp_path / "other.gz", sha)


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="x.gz"), "needs a checksum"),
    (dict(name="x.gz", md5="abc"), "`md5` of x.gz must be 32 lowercase hex digits"),
    (dict(name="../x.gz", md5="0" * 32), "`name` must be a plain file name"),
    (dict(name="x.gz", md5="0" * 32, size=-1), "`size` of x.gz must be None or an integer >= 0; got -1"),
])
def test_remote_file_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RemoteFile(**kwargs)


def test_fetch_argument_errors(tmp_path):
    file = RemoteFile("x.gz", md5="0" * 32)
    with pytest.raises(ValueError, match="`mirrors` must be a non-empty sequence"):
        download.fetch([file], tmp_path, [])
    with pytest.raises(ValueError, match="`timeout` must be a number of seconds > 0; got 0"):
        download.fetch([file], tmp_path, ["http://127.0.0.1/"], timeout=0)
    with pytest.raises(ValueError, match="`mirrors` must be None or a non-empty sequence"):
        load_mnist(tmp_path, mirrors=[""])


def test_home_follows_fpn_jax_home(monkeypatch, tmp_path):
    monkeypatch.setenv("FPN_JAX_HOME", str(tmp_path))
    assert download.data_home() == tmp_path / "data"
    assert data.IDX_DATASETS["fashion_mnist"].cache_dir == tmp_path / "data" / "fashion_mnist"
    monkeypatch.setenv("FPN_JAX_HOME", "")
    assert download.fpn_jax_home() == Path.home() / ".cache" / "fpn_jax"
