"""Data readers over archives and folders the tests build themselves."""

import hashlib
import http.server
import os
import pickle
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import builders
from cifarlab.data import load_dataset, split_validation
from cifarlab.data import download
from cifarlab.data.cifar import read_official
from cifarlab.data.images import to_array
from cifarlab.errors import CifarlabError


def _cat(parts):
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@pytest.mark.parametrize("suffix", ["tar.gz", "tar"])
def test_cifar10_binary_archive_round_trip(tmp_path, suffix):
    path, truth = builders.cifar10_binary(tmp_path / f"c.{suffix}", n_per_batch=7, n_test=5)
    a = read_official(path)
    x, y = _cat(truth["train"])
    assert a.x_train.shape == (35, 32, 32, 3) and a.x_train.dtype == np.uint8
    assert np.array_equal(a.x_train, x) and np.array_equal(a.y_train, y)
    xt, yt = _cat(truth["test"])
    assert np.array_equal(a.x_test, xt) and np.array_equal(a.y_test, yt)
    assert a.class_names == builders.CIFAR10_NAMES and a.format == "binary"


def test_cifar10_python_archive_round_trip(tmp_path):
    path, truth = builders.cifar10_python(tmp_path / "c.tar.gz", n_per_batch=6, n_test=4)
    a = read_official(path)
    x, y = _cat(truth["train"])
    assert np.array_equal(a.x_train, x) and np.array_equal(a.y_train, y)
    assert a.class_names == builders.CIFAR10_NAMES and a.format == "python"


def test_extracted_folder_reads_like_archive(tmp_path):
    import tarfile

    path, truth = builders.cifar10_binary(tmp_path / "c.tar.gz", n_per_batch=3, n_test=3)
    with tarfile.open(path) as t:
        t.extractall(tmp_path / "x", filter="data")
    for folder in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-bin"):
        a = read_official(folder)
        assert np.array_equal(a.x_train, _cat(truth["train"])[0])


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_cifar100_fine_and_coarse(tmp_path, fmt):
    path, truth, fine_names, coarse_names = builders.cifar100(tmp_path / "c100.tar.gz", fmt)
    a = read_official(path)
    assert a.dataset == "cifar100" and a.class_names == fine_names
    assert np.array_equal(a.x_train, truth["train"][0]) and np.array_equal(a.y_train, truth["train"][1])
    c = read_official(path, coarse=True)
    assert c.class_names == coarse_names and np.array_equal(c.y_test, truth["test"][2])


def test_malicious_pickle_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    files, _ = builders.cifar10_binary_files()
    files = {k.replace("cifar-10-batches-bin", "cifar-10-batches-py").removesuffix(".bin"): v for k, v in files.items()}
    files["cifar-10-batches-py/data_batch_1"] = pickle.dumps({"data": Evil()}, protocol=2)
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps({"label_names": builders.CIFAR10_NAMES})
    path = builders.write_archive(tmp_path / "evil.tar.gz", files)
    with pytest.raises(CifarlabError, match="unsafe or corrupt pickle.*refusing to load posix.system"):
        read_official(path)
    assert not marker.exists()


def test_truncated_archive(tmp_path, shared_archive):
    bad = tmp_path / "trunc.tar.gz"
    bad.write_bytes(shared_archive.read_bytes()[: 5_000_000])
    with pytest.raises(CifarlabError, match="truncated or corrupt archive"):
        load_dataset(bad)


def test_truncated_batch_inside_archive(tmp_path):
    files, _ = builders.cifar10_binary_files()
    files["cifar-10-batches-bin/data_batch_3.bin"] = files["cifar-10-batches-bin/data_batch_3.bin"][:-100]
    with pytest.raises(CifarlabError, match="data_batch_3.bin.*not a whole number"):
        read_official(builders.write_archive(tmp_path / "t.tar.gz", files))


def test_not_an_archive_and_wrong_layout(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not an archive")
    with pytest.raises(CifarlabError, match="not a readable tar archive"):
        read_official(junk)
    other = builders.write_archive(tmp_path / "other.tar.gz", {"photos/a.txt": b"hello"})
    with pytest.raises(CifarlabError, match="not a CIFAR-10/100 release"):
        read_official(other)


def test_label_out_of_range(tmp_path):
    files, _ = builders.cifar10_binary_files(n_per_batch=2)
    raw = bytearray(files["cifar-10-batches-bin/data_batch_2.bin"])
    raw[0] = 12
    files["cifar-10-batches-bin/data_batch_2.bin"] = bytes(raw)
    with pytest.raises(CifarlabError, match="label 12 out of range 0-9"):
        read_official(builders.write_archive(tmp_path / "l.tar.gz", files))


def test_missing_batch(tmp_path):
    files, _ = builders.cifar10_binary_files()
    del files["cifar-10-batches-bin/test_batch.bin"]
    with pytest.raises(CifarlabError, match="test_batch.bin is missing"):
        read_official(builders.write_archive(tmp_path / "m.tar.gz", files))


def test_validation_holdout_is_stratified_and_reproducible():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 100)
    x = rng.integers(0, 255, (1000, 32, 32, 3), dtype=np.uint8)
    xt, yt, xv, yv = split_validation(x, y, 0.1, seed=3)
    assert len(yv) == 100 and len(yt) == 900
    assert np.all(np.bincount(yv) == 10)
    again = split_validation(x, y, 0.1, seed=3)
    assert np.array_equal(again[3], yv) and np.array_equal(again[2], xv)
    assert not set(map(bytes, xv)) & set(map(bytes, xt))


def test_load_dataset_shared_copy(shared_archive):
    d = load_dataset(shared_archive)
    assert d.x_train.shape == (45000, 32, 32, 3) and d.x_val.shape == (5000, 32, 32, 3)
    assert d.x_test.shape == (10000, 32, 32, 3) and d.x_train.dtype == np.uint8
    assert np.all(np.bincount(d.y_val) == 500) and np.all(np.bincount(d.y_test) == 1000)
    assert d.class_names[3] == "cat" and d.class_names[5] == "dog"
    t = load_dataset(shared_archive, validate_on="test", limit=100)
    assert len(t.y_train) == 100 and t.x_val is t.x_test


def test_data_variable_and_missing_path(tmp_path, monkeypatch):
    path, _ = builders.cifar10_binary(tmp_path / "c.tar.gz")
    monkeypatch.setenv("CIFARLAB_DATA", str(path))
    assert load_dataset().source == str(path)
    with pytest.raises(CifarlabError, match="data not found"):
        load_dataset(tmp_path / "nope.tar.gz")


# ---- image folders ---------------------------------------------------------------------------


def test_image_folder_any_mode_and_size(tmp_path):
    root = builders.image_folder(tmp_path / "imgs", classes=("b_cat", "a_dog"), per_class=2)
    odd = root / "train" / "a_dog"
    Image.new("RGBA", (50, 20), (255, 0, 0, 0)).save(odd / "rgba.png")  # transparent -> white
    Image.new("L", (64, 64), 10).save(odd / "grey.jpg")
    Image.new("P", (40, 40)).save(odd / "palette.bmp")
    Image.fromarray(np.full((33, 33), 65535, np.uint16)).save(odd / "sixteen.png")
    Image.new("RGB", (300, 200), (0, 0, 255)).save(odd / "big.webp")
    ds = load_dataset(root)
    assert ds.class_names == ["a_dog", "b_cat"]
    assert ds.x_train.dtype == np.uint8 and ds.x_train.shape[1:] == (32, 32, 3)
    assert len(ds.y_train) + len(ds.y_val) == 9
    assert np.all(to_array(odd / "rgba.png") == 255)
    assert np.all(to_array(odd / "sixteen.png") == 255)
    assert np.all(to_array(odd / "grey.jpg") <= 12)


def test_image_folder_is_cached(tmp_path):
    root = builders.image_folder(tmp_path / "imgs", per_class=3)
    a = load_dataset(root)
    cache = Path(os.environ["XDG_CACHE_HOME"]) / "cifarlab" / "folders"
    assert len(list(cache.glob("*.npz"))) == 1
    b = load_dataset(root)
    assert np.array_equal(a.x_test, b.x_test)
    Image.new("RGB", (32, 32)).save(root / "train" / "cat" / "new.png")  # a new file makes a new key
    assert len(load_dataset(root, validate_on="test").y_train) == 10
    assert len(list(cache.glob("*.npz"))) == 2


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "dog").mkdir(parents=True)
    with pytest.raises(CifarlabError, match="no images"):
        load_dataset(tmp_path / "empty")
    root = builders.image_folder(tmp_path / "imgs")
    (root / "train" / "cat" / "fake.png").write_bytes(b"not really a png")
    with pytest.raises(CifarlabError, match="fake.png: not an image file"):
        load_dataset(root)


def test_odd_image_files(tmp_path):
    good = tmp_path / "g.png"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(good)
    trunc = tmp_path / "t.png"
    trunc.write_bytes(good.read_bytes()[:60])
    with pytest.raises(CifarlabError, match="t.png: unreadable image"):
        to_array(trunc)
    # a PNG header declaring 100,000 x 100,000 pixels: refused before any allocation
    bomb = tmp_path / "bomb.png"
    Image.new("1", (1, 1)).save(bomb)
    data = bytearray(bomb.read_bytes())
    data[16:24] = (100_000).to_bytes(4, "big") * 2
    import zlib
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    bomb.write_bytes(bytes(data))
    with pytest.raises(CifarlabError, match="bomb.png: .*(more than|decompression bomb)"):
        to_array(bomb)
    with pytest.raises(CifarlabError, match="no such file"):
        to_array(tmp_path / "missing.png")


# ---- download --------------------------------------------------------------------------------


@pytest.fixture
def http_dir(tmp_path, monkeypatch):
    """A real HTTP server on 127.0.0.1 serving tmp_path/www; CIFARLAB_MIRROR points at it."""
    www = tmp_path / "www"
    www.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(www), **kw)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("CIFARLAB_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/")
    yield www
    server.shutdown()


def test_download_checks_md5_and_caches(http_dir, monkeypatch):
    path, truth = builders.cifar10_binary(http_dir / "cifar-10-binary.tar.gz")
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(download.RELEASES, "cifar10", download.Release("cifar-10-binary.tar.gz", md5))
    got = download.fetch("cifar10", quiet=True)
    assert got == download.cache_dir() / "cifar-10-binary.tar.gz" and got.read_bytes() == path.read_bytes()
    path.unlink()  # the second load comes from the cache
    ds = load_dataset(validate_on="test")
    assert np.array_equal(ds.x_test, truth["test"][0][0])


def test_download_with_wrong_checksum_is_deleted(http_dir):
    builders.cifar10_binary(http_dir / "cifar-10-binary.tar.gz")
    with pytest.raises(CifarlabError, match="checksum mismatch.*deleted"):
        load_dataset()
    leftovers = list(download.cache_dir().iterdir()) if download.cache_dir().exists() else []
    assert leftovers == []


def test_no_network_says_how_to_pass_a_local_copy():
    with pytest.raises(CifarlabError, match="cannot download .*--data PATH or the CIFARLAB_DATA"):
        load_dataset()
