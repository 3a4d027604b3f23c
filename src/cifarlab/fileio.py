"""Atomic file writing: a reader sees the old file or the whole new one, never half.

Every file cifarlab writes goes through here: the bytes go to a temporary name in
the same folder, are flushed to disk, and are renamed over the target only when
complete. A crash or a full disk leaves the previous file (or nothing) behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cifarlab.errors import CifarlabError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` on success.

    ``suffix`` keeps the extension for writers that insist on one (Keras wants
    ``.keras``, matplotlib infers the format from it). On any exception the
    temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{suffix}", dir=target.parent)
        os.close(fd)
    except OSError as e:
        raise CifarlabError(f"cannot write {target}: {e.strerror or e}") from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates files 0600; give the final file the usual umask-based mode.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise CifarlabError(f"cannot write {target}: {e.strerror or e}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def fresh_dir(base: str | os.PathLike, tries: int = 1000) -> Path:
    """Create and return a folder that did not exist: ``base``, else ``base-2``, ``base-3``, ...

    ``mkdir`` fails on an existing name, so two processes that pick the same name (two runs
    started in the same second) still get a folder each.
    """
    base = Path(base)
    for i in range(1, tries + 1):
        candidate = base if i == 1 else base.with_name(f"{base.name}-{i}")
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
        except OSError as e:
            raise CifarlabError(f"cannot create {candidate}: {e.strerror or e}") from None
    raise CifarlabError(f"cannot create a new folder named like {base}: {tries} of them exist")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(target: str | os.PathLike, data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike, text: str) -> None:
    write_bytes(target, text.encode("utf-8"))


def write_json(target: str | os.PathLike, obj: Any) -> None:
    write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    # numpy scalars and arrays turn up in metrics; JSON has no such types.
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
