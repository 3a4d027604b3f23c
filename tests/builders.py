"""Build small datasets in the official CIFAR layouts (and image folders) for tests."""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def random_images(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _planes(x: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) red plane, green plane, blue plane."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _write(path: Path, files: dict[str, bytes]) -> Path:
    mode = "w:gz" if str(path).endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for name, data in files.items():
            _add(tar, name, data)
    return path


def cifar10_binary_files(n_per_batch: int = 20, n_test: int = 20, seed: int = 0):
    files, truth = {}, {"train": [], "test": []}
    for i in range(1, 7):
        n = n_per_batch if i <= 5 else n_test
        x, y = random_images(n, seed + i)
        rec = np.concatenate([y.astype(np.uint8)[:, None], _planes(x)], axis=1)
        name = f"data_batch_{i}.bin" if i <= 5 else "test_batch.bin"
        files[f"cifar-10-batches-bin/{name}"] = rec.tobytes()
        truth["train" if i <= 5 else "test"].append((x, y))
    files["cifar-10-batches-bin/batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    return files, truth


def cifar10_binary(path: Path, **kw) -> tuple[Path, dict]:
    files, truth = cifar10_binary_files(**kw)
    return _write(path, files), truth


def cifar10_python(path: Path, n_per_batch: int = 20, n_test: int = 20, seed: int = 0) -> tuple[Path, dict]:
    files, truth = {}, {"train": [], "test": []}
    for i in range(1, 7):
        n = n_per_batch if i <= 5 else n_test
        x, y = random_images(n, seed + i)
        d = {b"batch_label": b"batch", b"labels": [int(v) for v in y], b"data": _planes(x),
             b"filenames": [f"{j}.png".encode() for j in range(n)]}
        name = f"data_batch_{i}" if i <= 5 else "test_batch"
        files[f"cifar-10-batches-py/{name}"] = pickle.dumps(d, protocol=2)
        truth["train" if i <= 5 else "test"].append((x, y))
    files["cifar-10-batches-py/batches.meta"] = pickle.dumps(
        {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_vis": 3072}, protocol=2)
    return _write(path, files), truth


def cifar100_files(fmt: str, n_train: int = 50, n_test: int = 30, seed: int = 0):
    rng = np.random.default_rng(seed)
    fine_names = [f"fine{i:02d}" for i in range(100)]
    coarse_names = [f"coarse{i:02d}" for i in range(20)]
    files, truth = {}, {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        coarse = fine // 5
        truth[split] = (x, fine, coarse)
        if fmt == "binary":
            rec = np.concatenate([coarse.astype(np.uint8)[:, None], fine.astype(np.uint8)[:, None], _planes(x)], 1)
            files[f"cifar-100-binary/{split}.bin"] = rec.tobytes()
        else:
            d = {b"data": _planes(x), b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist()}
            files[f"cifar-100-python/{split}"] = pickle.dumps(d, protocol=2)
    if fmt == "binary":
        files["cifar-100-binary/fine_label_names.txt"] = "\n".join(fine_names).encode()
        files["cifar-100-binary/coarse_label_names.txt"] = "\n".join(coarse_names).encode()
    else:
        files["cifar-100-python/meta"] = pickle.dumps(
            {b"fine_label_names": [n.encode() for n in fine_names],
             b"coarse_label_names": [n.encode() for n in coarse_names]}, protocol=2)
    return files, truth, fine_names, coarse_names


def cifar100(path: Path, fmt: str, **kw):
    files, truth, fine, coarse = cifar100_files(fmt, **kw)
    return _write(path, files), truth, fine, coarse


def write_archive(path: Path, files: dict[str, bytes]) -> Path:
    return _write(path, files)


def image_folder(root: Path, classes=("cat", "dog", "frog"), per_class: int = 4, test_per_class: int = 2,
                 ext: str = "png", size=(32, 32)) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", per_class), ("test", test_per_class)):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(a).save(d / f"{i}.{ext}")
    return root
