"""Readers for the official CIFAR-10 and CIFAR-100 releases, in both published formats.

Binary format (``cifar-10-binary.tar.gz``, ``cifar-100-binary.tar.gz``): fixed-size
records, one label byte (CIFAR-100: coarse then fine) followed by 3,072 pixel
bytes, red plane then green then blue, each 32 rows of 32.

Python format (``cifar-10-python.tar.gz``, ``cifar-100-python.tar.gz``): pickled
dicts holding a ``(N, 3072)`` uint8 array and a list of labels. Pickle can run
arbitrary code, so :class:`SafeUnpickler` admits only the few globals a numpy
array needs; a crafted file is refused, never executed.

Both readers take an archive (``.tar.gz``, ``.tgz`` or ``.tar``) or the folder it
extracts to, and return uint8 images ``(N, 32, 32, 3)`` with int64 labels ``(N,)``.

Hostile files are refused with a :class:`CifarlabError` before they cost memory: a file
(archive member or file in a folder) larger than ``MAX_FILE_BYTES``, archives whose files add
up to more than ``MAX_TOTAL_BYTES`` or that hold more than ``MAX_ENTRIES`` entries (gzip
bombs, header floods), pickled arrays larger than their payload (zero strides, a huge empty
array), object arrays, and pickled lists that would expand to more than ``MAX_PICKLE_ITEMS``
items or nest deeper than ``MAX_PICKLE_DEPTH`` (shared references, a list holding itself).
"""

from __future__ import annotations

import io
import math
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from cifarlab.errors import CifarlabError

PIXELS = 32 * 32 * 3
# The largest official file is CIFAR-100's train batch, 154 MB (50,000 records); a whole release is 185 MB.
MAX_FILE_BYTES = 256 << 20
MAX_TOTAL_BYTES = 512 << 20
MAX_ENTRIES = 10_000  # tar headers read; an official archive has about ten
# Items in an unpickled batch once shared references are counted each time (CIFAR-100's train
# batch: 150,000 labels and file names); nesting of an official batch: a dict of lists, depth 2.
MAX_PICKLE_ITEMS = 10_000_000
MAX_PICKLE_DEPTH = 8


@dataclass(frozen=True)
class Layout:
    """Where one official release keeps its files and how its records look."""

    folder: str  # top-level folder inside the archive
    format: str  # "binary" or "python"
    train: tuple[str, ...]
    test: tuple[str, ...]
    num_classes: int  # fine classes (CIFAR-100) or the only ones (CIFAR-10)
    dataset: str


LAYOUTS = (
    Layout("cifar-10-batches-bin", "binary", tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
           ("test_batch.bin",), 10, "cifar10"),
    Layout("cifar-10-batches-py", "python", tuple(f"data_batch_{i}" for i in range(1, 6)),
           ("test_batch",), 10, "cifar10"),
    Layout("cifar-100-binary", "binary", ("train.bin",), ("test.bin",), 100, "cifar100"),
    Layout("cifar-100-python", "python", ("train",), ("test",), 100, "cifar100"),
)
META_FILES = {
    "cifar-10-batches-bin": ("batches.meta.txt",),
    "cifar-10-batches-py": ("batches.meta",),
    "cifar-100-binary": ("fine_label_names.txt", "coarse_label_names.txt"),
    "cifar-100-python": ("meta",),
}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


@dataclass
class Arrays:
    """One dataset read from disk, before any validation split."""

    x_train: np.ndarray  # (N, 32, 32, 3) uint8
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: list[str]
    dataset: str  # "cifar10" | "cifar100"
    format: str  # "binary" | "python"


def detect_layout(names: list[str]) -> tuple[Layout, str] | None:
    """Find an official layout among member paths; returns it and its prefix inside the container."""
    for name in names:
        parts = PurePosixPath(name).parts
        for layout in LAYOUTS:
            if layout.folder in parts:
                i = parts.index(layout.folder)
                return layout, "/".join(parts[: i + 1])
    return None


def read_official(path: Path, coarse: bool = False) -> Arrays:
    """Read an official CIFAR release from an archive or an extracted folder."""
    files = _Container(path)
    found = detect_layout(files.names())
    if found is None:
        raise CifarlabError(
            f"{path}: not a CIFAR-10/100 release (expected a folder such as cifar-10-batches-bin/ "
            "or cifar-10-batches-py/ inside)")
    layout, prefix = found
    if coarse and layout.dataset != "cifar100":
        raise CifarlabError("coarse labels exist only in CIFAR-100")
    get = lambda f: files.read(f"{prefix}/{f}")  # noqa: E731
    class_names = _class_names(layout, get, coarse)
    num_classes = len(class_names)
    splits = []
    for group in (layout.train, layout.test):
        xs, ys = [], []
        for f in group:
            raw = get(f)
            x, y = (_parse_binary if layout.format == "binary" else _parse_python)(raw, layout, coarse, f)
            xs.append(x)
            ys.append(y)
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        y = np.concatenate(ys) if len(ys) > 1 else ys[0]
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise CifarlabError(f"{path}: label {int(y.max() if y.max() >= num_classes else y.min())} "
                                f"out of range 0-{num_classes - 1}")
        splits.append((x, y))
    (x_train, y_train), (x_test, y_test) = splits
    return Arrays(x_train, y_train, x_test, y_test, class_names, layout.dataset, layout.format)


def _parse_binary(raw: bytes, layout: Layout, coarse: bool, name: str):
    label_bytes = 2 if layout.dataset == "cifar100" else 1
    rec = label_bytes + PIXELS
    if len(raw) == 0 or len(raw) % rec:
        raise CifarlabError(f"{name}: {len(raw):,} bytes is not a whole number of {rec}-byte records "
                            "(truncated or not a CIFAR binary file)")
    a = np.frombuffer(raw, dtype=np.uint8).reshape(-1, rec)
    # CIFAR-100 records carry the coarse label first, then the fine one.
    y = a[:, 0 if (coarse or label_bytes == 1) else 1].astype(np.int64)
    x = a[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y


def _parse_python(raw: bytes, layout: Layout, coarse: bool, name: str):
    d = safe_unpickle(raw, name)
    key = "labels" if layout.dataset == "cifar10" else ("coarse_labels" if coarse else "fine_labels")
    if not isinstance(d, dict) or "data" not in d or key not in d:
        raise CifarlabError(f"{name}: not a CIFAR python batch (no 'data' and '{key}' entries)")
    data, labels = d["data"], d[key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise CifarlabError(f"{name}: 'data' is not a uint8 array of shape (N, {PIXELS})")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(data) or not np.issubdtype(y.dtype, np.integer):
        raise CifarlabError(f"{name}: {len(y)} labels for {len(data)} images")
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x), y.astype(np.int64)


def _class_names(layout: Layout, get, coarse: bool) -> list[str]:
    meta = META_FILES[layout.folder]
    try:
        if layout.format == "binary":
            raw = get(meta[1] if coarse else meta[0])
            names = [s.strip() for s in raw.decode("utf-8", "replace").splitlines() if s.strip()]
        else:
            d = safe_unpickle(get(meta[0]), meta[0])
            key = "label_names" if layout.dataset == "cifar10" else (
                "coarse_label_names" if coarse else "fine_label_names")
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in d[key]]
    except CifarlabError as e:
        if layout.dataset == "cifar10" and "missing" in str(e):
            return list(CIFAR10_CLASSES)  # the names are public; a copy without meta still works
        raise
    except (KeyError, TypeError):
        raise CifarlabError(f"{meta[0]}: no class names in it") from None
    expected = 20 if coarse else layout.num_classes
    if len(names) != expected:
        raise CifarlabError(f"{meta[0]}: {len(names)} class names, expected {expected}")
    return names


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: numpy's own pickles only name the class as the
    first argument of ``_reconstruct``; calling it (any shape, strides and buffer) is refused."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
    """numpy's ``_reconstruct`` for plain, empty arrays; ``ndarray.__setstate__`` then fills them
    from the pickle's bytes and refuses a payload of the wrong size."""
    import numpy._core.multiarray as ma  # the non-deprecated home of _reconstruct

    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError("refusing an array of a type other than numpy.ndarray")
    if not isinstance(shape, tuple) or not all(isinstance(n, int) for n in shape) or math.prod(shape) > 1:
        raise pickle.UnpicklingError(f"refusing an array of shape {shape!r} from no data")
    array = ma._reconstruct(np.ndarray, shape, dtype)
    if array.dtype.hasobject:
        raise pickle.UnpicklingError("refusing an array of Python objects")
    return array


def _encode(obj, encoding="utf-8", errors="strict"):
    """``_codecs.encode`` as Python 3 pickles bytes: ``encode(str, "latin1")``, one byte per character.
    Other codecs are refused: chained "hex" encodings would double the data at each step."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return obj.encode("latin1", errors)


def _dtype(*args):
    d = np.dtype(*args)
    if d.hasobject:
        raise pickle.UnpicklingError("refusing an array of Python objects")
    return d


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays, lists, dicts and strings, and nothing else."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # Python 3 writes bytes in protocol-2 pickles as _codecs.encode(str, "latin1").
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return {"_reconstruct": _reconstruct, "ndarray": _NDARRAY, "dtype": _dtype, "encode": _encode}[name]


def _check_size(obj, name: str) -> None:
    """Refuse containers that would expand past ``MAX_PICKLE_ITEMS`` or ``MAX_PICKLE_DEPTH``.

    Pickle shares references, so a few bytes can describe ``[[x] * 10] * 10 ...``: 10**10 items
    to anything that walks it (numpy, ``str``). Counted here once per distinct container.
    """
    sizes: dict[int, int] = {}
    open_: set[int] = set()

    def size(o, depth: int) -> int:
        if not isinstance(o, (list, tuple, dict)):
            return 1
        key = id(o)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise CifarlabError(f"{name}: refusing a pickled list that contains itself")
        if depth > MAX_PICKLE_DEPTH:
            raise CifarlabError(f"{name}: refusing pickled lists nested more than {MAX_PICKLE_DEPTH} deep")
        open_.add(key)
        total = 1
        for item in [*o.keys(), *o.values()] if isinstance(o, dict) else o:
            total += size(item, depth + 1)
            if total > MAX_PICKLE_ITEMS:
                raise CifarlabError(f"{name}: refusing a pickle of too many items (over {MAX_PICKLE_ITEMS:,} "
                                    "once shared references are expanded)")
        open_.discard(key)
        sizes[key] = total
        return total

    size(obj, 0)


def safe_unpickle(raw: bytes, name: str):
    try:
        # latin1 turns Python 2 str keys into str and leaves numpy's buffers intact.
        obj = SafeUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError as e:
        raise CifarlabError(f"{name}: unsafe or corrupt pickle ({e})") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError) as e:
        raise CifarlabError(f"{name}: corrupt or truncated pickle ({type(e).__name__})") from None
    _check_size(obj, name)
    if isinstance(obj, dict):
        # Python 2 wrote str keys (read back as str); Python 3 writers use bytes keys.
        obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    return obj


class _Container:
    """Uniform read access to files in a tar archive or a folder."""

    def __init__(self, path: Path):
        self.path = path
        self._members: dict[str, bytes] | None = None
        if path.is_dir():
            self._dir = path
            return
        self._dir = None
        try:
            with tarfile.open(path, "r:*") as tar:
                # Read every regular file once, streaming: random access into a
                # gzip stream would decompress it again for each member.
                members, total = {}, 0
                for i, m in enumerate(tar):
                    if i >= MAX_ENTRIES:
                        raise CifarlabError(f"{path}: more than {MAX_ENTRIES:,} entries; not a CIFAR release")
                    if m.isfile() and detect_layout([m.name]) is not None:
                        _check_file_size(path, m.name, m.size)
                        total += m.size
                        if total > MAX_TOTAL_BYTES:
                            raise CifarlabError(f"{path}: its CIFAR files add up to more than "
                                                f"{MAX_TOTAL_BYTES >> 20} MB; not a CIFAR release")
                        f = tar.extractfile(m)
                        members[m.name.lstrip("./")] = f.read(m.size) if f else b""
                self._members = members
        except tarfile.ReadError as e:
            raise CifarlabError(f"{path}: not a readable tar archive ({e})") from None
        except (EOFError, OSError, tarfile.TarError) as e:
            # gzip raises EOFError/BadGzipFile for truncated or corrupt archives.
            raise CifarlabError(f"{path}: truncated or corrupt archive ({type(e).__name__}: {e})") from None

    def names(self) -> list[str]:
        if self._members is not None:
            return list(self._members)
        return [p.relative_to(self._dir).as_posix() for p in self._dir.rglob("*") if p.is_file()] + [
            self._dir.name + "/x"]

    def read(self, name: str) -> bytes:
        if self._members is not None:
            if name not in self._members:
                raise CifarlabError(f"{self.path}: {name} is missing from the archive")
            return self._members[name]
        p = self._resolve(name)
        if not p.is_file():
            raise CifarlabError(f"{self.path}: {name} is missing")
        _check_file_size(self.path, name, p.stat().st_size)
        return p.read_bytes()

    def _resolve(self, name: str) -> Path:
        # The folder passed may be the release folder itself or any parent of it.
        p = self._dir / name
        if p.exists():
            return p
        parts = PurePosixPath(name).parts
        if parts and parts[0] == self._dir.name:
            return self._dir.joinpath(*parts[1:])
        return p


def _check_file_size(container: Path, name: str, size: int) -> None:
    if size > MAX_FILE_BYTES:
        raise CifarlabError(f"{container}: {name} is {size:,} bytes, larger than any CIFAR file "
                            f"({MAX_FILE_BYTES >> 20} MB at most); refusing to read it")
