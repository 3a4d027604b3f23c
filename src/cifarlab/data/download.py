"""Download an official CIFAR archive once, checked, into the cache folder.

The file is streamed to a temporary name beside its destination, its MD5 is
compared with the published one, and only then is it renamed into place; a
wrong checksum deletes it. So a file in the cache is always complete and
verified. ``CIFARLAB_MIRROR`` replaces the official base URL (for a mirror, or a
local server in tests).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path

OFFICIAL_BASE = "https://www.cs.toronto.edu/~kriz/"


@dataclass(frozen=True)
class Release:
    filename: str
    md5: str  # published by the dataset's authors on the download page


RELEASES = {
    "cifar10": Release("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530"),
    "cifar10-python": Release("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    "cifar100": Release("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8"),
    "cifar100-python": Release("cifar-100-python.tar.gz", "eb9058c3a382ffc7106e4002c42a8d85"),
}
HELP = "pass a local copy with --data PATH or the CIFARLAB_DATA variable"


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "cifarlab"


def fetch(dataset: str, quiet: bool = False) -> Path:
    """Return the path of the verified archive for ``dataset``, downloading it if needed."""
    if dataset not in RELEASES:
        raise CifarlabError(f"unknown dataset {dataset!r}; choose from {', '.join(RELEASES)}")
    rel = RELEASES[dataset]
    dest = cache_dir() / rel.filename
    if dest.is_file():
        return dest
    base = os.environ.get("CIFARLAB_MIRROR", OFFICIAL_BASE)
    url = base.rstrip("/") + "/" + rel.filename
    with atomic_path(dest) as tmp:
        try:
            digest = _stream(url, tmp, quiet)
        except (urllib.error.URLError, http.client.HTTPException, TimeoutError, ConnectionError) as e:
            reason = getattr(e, "reason", e)
            raise CifarlabError(f"cannot download {url} ({reason}); {HELP}") from None
        if digest != rel.md5:
            raise CifarlabError(f"{url}: checksum mismatch (MD5 {digest}, expected {rel.md5}); the file was deleted")
    return dest


def _stream(url: str, dest: Path, quiet: bool) -> str:
    """Copy ``url`` to ``dest`` with a progress bar; return the MD5 hex digest of what arrived."""
    from tqdm import tqdm

    md5 = hashlib.md5()
    with urllib.request.urlopen(url, timeout=30) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {Path(url).name}",
                  disable=quiet, leave=False) as bar:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
                md5.update(chunk)
                bar.update(len(chunk))
        if total is not None and out.tell() != total:
            raise CifarlabError(f"download of {url} stopped after {out.tell():,} of {total:,} bytes")
    return md5.hexdigest()
