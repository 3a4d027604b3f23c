"""The findings file of ``cifarlab audit`` (``findings.csv``), and acting on it when training.

One row per finding; the columns are :data:`COLUMNS`. ``index`` (and ``pair_index``) is the
image's position in its split as the source stores it (0-49,999 for CIFAR-10's training images),
before any hold-out split. ``kind`` is one of :data:`KINDS`:

- ``label``: the given label is likely wrong; ``suggested_label`` is the likely right one;
- ``duplicate``: an exact or near copy of ``pair_index`` in the same split;
- ``leak``: a training image with an exact or near copy in the test split (``pair_index``);
- ``outlier``: unlike any class (low density among the other images' embeddings);
- ``blank``: a (nearly) constant image.

``cifarlab train --exclude FINDINGS[:KINDS]`` trains without the training images the rows of
those kinds name (``split == "train"``); with ``--relabel``, ``label`` rows keep their image
with the suggested label instead. It lives in the data package because training reads it and
``cifarlab.audit`` (which sits above training) writes it.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarlab.errors import CifarlabError

COLUMNS = ("kind", "split", "index", "path", "given_label", "suggested_label", "score",
           "pair_split", "pair_index", "pair_path", "detail")
KINDS = ("label", "duplicate", "leak", "outlier", "blank")
MAX_BYTES = 256 * 1024 * 1024  # a findings file lists at most a few rows per image


def parse_spec(spec: str) -> tuple[Path, tuple[str, ...]]:
    """``"audit/findings.csv:label,leak"`` -> (path, kinds); no ``:KINDS`` means every kind."""
    path, kinds = spec, ""
    head, sep, tail = spec.rpartition(":")
    if sep and head and "/" not in tail and not Path(spec).exists():
        path, kinds = head, tail
    chosen = tuple(k.strip() for k in kinds.split(",") if k.strip()) if kinds else KINDS
    unknown = [k for k in chosen if k not in KINDS]
    if unknown:
        raise CifarlabError(f"--exclude: unknown finding kind {unknown[0]!r}; choose from {', '.join(KINDS)}")
    return Path(path), chosen


@dataclass
class Findings:
    """What a findings file asks of the training images.

    ``drop``: sorted int64 positions of training images to leave out; ``relabel``: position ->
    the suggested class name; ``given``: position -> the label the findings file saw there, to check it
    describes the dataset being trained on.
    """

    spec: str
    path: Path
    kinds: tuple[str, ...]
    drop: np.ndarray
    relabel: dict[int, str] = field(default_factory=dict)
    given: dict[int, str] = field(default_factory=dict)
    sha256: str = ""

    def apply(self, x: np.ndarray, y: np.ndarray, class_names: list[str], limit: int | None = None):
        """``(x, y, info)``: the training images ``x`` uint8 ``(N, 32, 32, 3)``, labels ``y`` int64 ``(N,)``
        without the dropped images and with the new labels; ``info`` says what was done (for config.json).

        Rows past ``limit`` (a ``--limit`` run) concern images not trained on and are skipped; without
        a limit a row past the end, or a given label that differs from the dataset's, is an error:
        the findings were made for another dataset.
        """
        n = len(y)
        names = {name: i for i, name in enumerate(class_names)}
        positions = sorted(set(self.given))
        past = [i for i in positions if i >= n]
        if past and limit is None:
            raise CifarlabError(f"{self.path}: names training image {past[0]:,}, but the dataset has {n:,}; "
                                "these findings are of another dataset")
        for i in positions:
            if i < n and names.get(self.given[i]) != int(y[i]):
                raise CifarlabError(f"{self.path}: training image {i:,} is labelled {class_names[int(y[i])]!r} "
                                    f"here but {self.given[i]!r} in the findings; these findings are of another dataset")
        bad = [name for name in self.relabel.values() if name not in names]
        if bad:
            raise CifarlabError(f"{self.path}: suggested label {bad[0]!r} is not a class of this dataset")
        y = y.copy()
        relabelled = 0
        for i, new in self.relabel.items():
            if i < n:
                y[i] = names[new]
                relabelled += 1
        drop = self.drop[self.drop < n]
        keep = np.ones(n, dtype=bool)
        keep[drop] = False
        info = {"spec": self.spec, "path": str(self.path), "sha256": self.sha256, "kinds": list(self.kinds),
                "excluded": int(len(drop)), "relabelled": relabelled,
                "excluded_indices": [int(i) for i in drop], "relabelled_indices": sorted(i for i in self.relabel if i < n)}
        return x[keep], y[keep], info


def read_findings(spec: str, relabel: bool = False) -> Findings:
    """Read ``FINDINGS[:KINDS]``; every problem with the file is one :class:`CifarlabError`.

    With ``relabel``, ``label`` rows become relabellings rather than exclusions.
    """
    path, kinds = parse_spec(spec)
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CifarlabError(f"{path}: {path.stat().st_size:,} bytes is too large for a findings file")
        data = path.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise CifarlabError(f"findings file not found: {path}") from None
    except IsADirectoryError:
        raise CifarlabError(f"{path}: a folder, not a findings file (findings.csv)") from None
    except OSError as e:
        raise CifarlabError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise CifarlabError(f"{path}: not a findings file (not UTF-8 text)") from None
    try:
        reader = csv.DictReader(text.splitlines())
        header = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as e:
        raise CifarlabError(f"{path}: not a findings file ({e})") from None
    missing = [c for c in ("kind", "split", "index", "given_label", "suggested_label") if c not in header]
    if missing:
        raise CifarlabError(f"{path}: not a findings file of cifarlab audit (no column {missing[0]!r})")
    drop, new, given = set(), {}, {}
    for line, row in enumerate(rows, start=2):
        kind, split = row.get("kind"), row.get("split")
        if kind not in KINDS or split not in ("train", "test"):
            raise CifarlabError(f"{path}: line {line}: unknown kind {kind!r} or split {split!r}")
        try:
            index = int(row["index"])
            if index < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise CifarlabError(f"{path}: line {line}: index {row.get('index')!r} is not an image position") from None
        if kind not in kinds or split != "train":
            continue
        given[index] = row["given_label"]
        if relabel and kind == "label":
            new[index] = row["suggested_label"]
        else:
            drop.add(index)
    for index in drop:  # an image both dropped and relabelled (two kinds of finding): dropped
        new.pop(index, None)
    return Findings(spec, path, kinds, np.array(sorted(drop), dtype=np.int64), relabel=new, given=given,
                    sha256=hashlib.sha256(data).hexdigest())
