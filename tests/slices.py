"""A small slice of the shared CIFAR-10 copy, in the same official binary layout, for fast real runs.

Training subprocesses on the whole archive spend most of their time evaluating the 10,000
test images (7 passes with the quick recipe's test-time augmentation); a slice keeps the
real images and format and cuts that to a second.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from builders import write_archive

RECORD = 3073  # 1 label byte + 3,072 pixel bytes
FOLDER = "cifar-10-batches-bin"


def slice_archive(src: Path, dest: Path, n_train: int = 1000, n_test: int = 500) -> Path:
    """``dest`` (.tar.gz): the first ``n_train`` training and ``n_test`` test records of ``src``."""
    files = {}
    with tarfile.open(src) as tar:
        for i in range(1, 6):  # the first n_train / 5 records of each training batch
            with tar.extractfile(f"{FOLDER}/data_batch_{i}.bin") as f:
                files[f"{FOLDER}/data_batch_{i}.bin"] = f.read(RECORD * (n_train // 5))
        with tar.extractfile(f"{FOLDER}/test_batch.bin") as f:
            files[f"{FOLDER}/test_batch.bin"] = f.read(RECORD * n_test)
        with tar.extractfile(f"{FOLDER}/batches.meta.txt") as f:
            files[f"{FOLDER}/batches.meta.txt"] = f.read()
    return write_archive(dest, files)
