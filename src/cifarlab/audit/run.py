"""``cifarlab audit``: cross-fit, then find label issues, duplicates, leaks and outliers; write the findings.

Writes into the output folder (default ``audit/``), each file atomically:

- ``folds/fold_K.npz``  each fold's out-of-sample probabilities and embeddings (see ``folds``);
- ``findings.csv``      one row per finding (columns: ``cifarlab.data.findings.COLUMNS``);
- ``audit.json``        settings, counts and timings;
- ``audit.html``        the self-contained report (``audit.report``).
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.fileio import write_json, write_text

# Epochs per fold, fewer than quick's 8 so that 5 folds fit 10 minutes on 2 cores: 658 CPU seconds
# for the whole audit of CIFAR-10 (benchmarks/RESULTS.md, "audit"; the wall time there was contended).
DEFAULT_EPOCHS = 5
DEFAULT_FOLDS = 5


@dataclass
class AuditConfig:
    """What a user asks of ``cifarlab audit``; ``None`` means the default."""

    data: str | None = None
    dataset: str = "cifar10"
    coarse: bool = False
    recipe: str = "quick"
    folds: int = DEFAULT_FOLDS
    epochs: float | None = None  # None: DEFAULT_EPOCHS
    batch_size: int | None = None  # None: the recipe's
    seed: int = 0
    limit: int | None = None  # only the first LIMIT training images (tries, tests)
    out: str = "audit"
    quiet: bool = False
    report: bool = True


def check(cfg: AuditConfig):
    """One-line errors for bad settings, before any data or TensorFlow; returns the (Recipe, ModelSpec)."""
    from cifarlab.audit.folds import check_k
    from cifarlab.registry import RECIPES, get_model, get_recipe

    recipe = get_recipe(cfg.recipe)
    if recipe.trainer != "fast":
        fast = ", ".join(n for n, r in RECIPES.items() if r.trainer == "fast")
        raise CifarlabError(f"the audit trains with the fast loop: --recipe must be one of {fast}, not {cfg.recipe!r}")
    check_k(cfg.folds)
    epochs = DEFAULT_EPOCHS if cfg.epochs is None else cfg.epochs
    if not isinstance(epochs, (int, float)) or not 0 < epochs <= 1000:
        raise CifarlabError(f"--epochs must be a positive number of epochs, not {epochs!r}")
    for name in ("batch_size", "limit"):
        v = getattr(cfg, name)
        if v is not None and (not isinstance(v, int) or v < 1):
            raise CifarlabError(f"--{name.replace('_', '-')} must be a positive whole number, not {v!r}")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise CifarlabError(f"-o {out}: exists and is not a folder")
    epochs = int(epochs) if float(epochs).is_integer() else float(epochs)  # 5.0 from the command line is 5
    recipe = recipe.with_overrides(epochs=epochs, batch_size=cfg.batch_size)
    return recipe, get_model(recipe.model)


def _paths(source: Path, split: str, n: int, class_names: list[str]) -> list[str]:
    """The file of each image of an image folder's split, in the loader's order; '' for archives."""
    from cifarlab.data.folders import list_split, looks_like_image_folder

    if not looks_like_image_folder(source):
        return [""] * n
    files, _, _ = list_split(source, split, class_names if split == "test" else None)
    return [str(f.resolve()) for f in files[:n]]


def audit(config: AuditConfig | None = None, **kwargs) -> dict:
    """Audit a dataset (see the module docstring); returns what ``audit.json`` holds."""
    from cifarlab.data import load_dataset

    cfg = config or AuditConfig(**kwargs)
    recipe, spec = check(cfg)
    t_start = time.perf_counter()
    ds = load_dataset(cfg.data, dataset=cfg.dataset, validate_on="test", limit=cfg.limit, coarse=cfg.coarse,
                      quiet=cfg.quiet)
    from cifarlab.audit.folds import check_folds

    check_folds(ds.y_train, cfg.folds, ds.class_names)
    timings = {"load_seconds": round(time.perf_counter() - t_start, 2)}
    out = Path(cfg.out)

    from cifarlab._tf import import_quietly

    import_quietly()
    from cifarlab.audit.folds import cross_fit, fingerprint
    from cifarlab.training import precision as prec

    precision = prec.resolve(recipe.precision)
    prec.apply(precision)
    settings = {"recipe": recipe.to_dict(), "model": spec.name, "folds": cfg.folds, "seed": cfg.seed,
                "precision": precision}
    key = fingerprint(settings, ds.y_train, ds.x_train)
    t0 = time.perf_counter()
    cf = cross_fit(ds.x_train, ds.y_train, ds.x_test, cfg.folds, recipe, spec, ds.num_classes, out / "folds", key,
                   seed=cfg.seed, quiet=cfg.quiet)
    timings["cross_fit_seconds"] = round(time.perf_counter() - t0, 2)

    findings, summary = analyse(ds, cf, timings)
    train_paths = _paths(Path(ds.source), "train", len(ds.y_train), ds.class_names)
    test_paths = _paths(Path(ds.source), "test", len(ds.y_test), ds.class_names)
    for row in findings:
        row["path"] = (train_paths if row["split"] == "train" else test_paths)[row["index"]]
        if row["pair_index"] != "":
            row["pair_path"] = (train_paths if row["pair_split"] == "train" else test_paths)[row["pair_index"]]
    write_findings(out / "findings.csv", findings)
    summary.update(
        settings={**settings, "epochs": recipe.epochs, "batch_size": recipe.batch_size, "limit": cfg.limit,
                  "request": asdict(cfg)},
        data={"source": ds.source, "dataset": ds.name, "format": ds.format, "class_names": ds.class_names,
              "num_train": len(ds.y_train), "num_test": len(ds.y_test)},
        folds={"trained_now": cf.trained, "seconds": cf.seconds},
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if cfg.report:
        from cifarlab.audit.report import write_report

        t0 = time.perf_counter()
        write_report(out / "audit.html", summary, findings, ds)
        timings["report_seconds"] = round(time.perf_counter() - t0, 2)
    timings["total_seconds"] = round(time.perf_counter() - t_start, 2)
    write_json(out / "audit.json", summary)  # last: its presence marks a complete audit
    return summary


def analyse(ds, cf, timings: dict) -> tuple[list[dict], dict]:
    """Findings rows (dicts of ``COLUMNS``, ``path`` left empty) and the summary counts, from the cross-fit."""
    from cifarlab.audit import duplicates, labels, outliers

    names, n_train = ds.class_names, len(ds.y_train)
    rows: list[dict] = []

    def add(kind, split, index, given, suggested, score, detail, pair_split="", pair_index=""):
        rows.append({"kind": kind, "split": split, "index": int(index), "path": "", "given_label": given,
                     "suggested_label": suggested, "score": round(float(score), 4), "pair_split": pair_split,
                     "pair_index": pair_index if pair_index == "" else int(pair_index), "pair_path": "",
                     "detail": detail})

    t0 = time.perf_counter()
    issues, label_choice = labels.find(ds.y_train, cf.probs, cf.insample_probs, len(cf.seconds))
    for i, s, score in zip(issues["index"], issues["suggested"], issues["score"]):
        o, n, g = cf.probs[i], cf.insample_probs[i], ds.y_train[i]
        add("label", "train", i, names[g], names[s], score,
            f"probability {o[g]:.3f} for the given label, {o[s]:.3f} for {names[s]} out of fold; "
            f"{n[g]:.3f} and {n[s]:.3f} from the nets that trained on it")
    timings["label_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    x_all = np.concatenate([ds.x_train, ds.x_test])
    emb = np.concatenate([cf.emb_train, cf.emb_test])
    cf.emb_train = cf.emb_test = None  # 150 MB each for CIFAR-10's 5 folds; only the stack is used from here
    reduced = duplicates.reduce_embeddings(emb)
    del emb
    pairs = duplicates.find_duplicates(x_all, reduced)
    y_all = np.concatenate([ds.y_train, ds.y_test])

    def where(p):
        return ("train", p) if p < n_train else ("test", p - n_train)

    leaked_test, dup_test = set(), set()
    for a, b, score, exact, (dy, dx, mirror), px, em in zip(pairs.i, pairs.j, pairs.score, pairs.exact, pairs.how,
                                                           pairs.pixel, pairs.embedding):
        (sa, ia), (sb, ib) = where(a), where(b)
        detail = ("exact copy" if exact else
                  f"near copy: shifted by ({dy}, {dx}){', mirrored' if mirror else ''}; pixel correlation "
                  f"{px:.3f}, embedding similarity {em:.3f}")
        if sa != sb:  # a < b and train comes first: a is the training image, b the test image
            leaked_test.add(int(ib))
            add("leak", "train", ia, names[y_all[a]], names[y_all[b]], score, detail, "test", ib)
        else:  # the later image is the one to drop, the earlier one is kept
            if sa == "test":
                dup_test.update((int(ia), int(ib)))
            add("duplicate", sb, ib, names[y_all[b]], names[y_all[a]], score, detail, sa, ia)
    timings["duplicate_seconds"] = round(time.perf_counter() - t0, 2)

    t0 = time.perf_counter()
    distance = outliers.knn_distance(reduced, n_train)
    out_idx, out_z = outliers.outliers(distance)
    blank_idx, blank_score = outliers.blank_images(x_all)
    blank = set(int(p) for p in blank_idx)
    for p, z in zip(out_idx, out_z):
        if int(p) not in blank:
            s, i = where(p)
            add("outlier", s, i, names[y_all[p]], "", z,
                f"mean similarity {1 - distance[p]:.3f} to its {outliers.K_NEIGHBOURS} nearest training images "
                f"({z:.1f} robust standard deviations below the median)")
    for p, score in zip(blank_idx, blank_score):
        s, i = where(p)
        add("blank", s, i, names[y_all[p]], "", score, "a (nearly) constant image")
    timings["outlier_seconds"] = round(time.perf_counter() - t0, 2)

    n_test = len(ds.y_test)
    pred = cf.test_probs.argmax(1)
    clean = np.ones(n_test, dtype=bool)
    clean[sorted(leaked_test)] = False
    with_dup = leaked_test | dup_test
    counts = {k: sum(r["kind"] == k for r in rows) for k in ("label", "duplicate", "leak", "outlier", "blank")}
    per_class = {n: {"images": int((ds.y_train == c).sum()),
                     "label_issues_given": int((ds.y_train[issues["index"]] == c).sum()),
                     "label_issues_suggested": int((issues["suggested"] == c).sum())}
                 for c, n in enumerate(names)}
    summary = {
        "counts": counts,
        "per_class": per_class,
        "label_method": {"library": "cleanlab", "filter_by": labels.FILTER_BY, "ranked_by": labels.RANK_BY,
                         **label_choice},
        "out_of_fold_accuracy": round(float((cf.probs.argmax(1) == ds.y_train).mean()), 4),
        "test": {
            "accuracy": round(float((pred == ds.y_test).mean()), 4),
            "accuracy_without_leaked": round(float((pred[clean] == ds.y_test[clean]).mean()), 4) if clean.any() else None,
            "leaked_images": len(leaked_test),
            "images_with_near_duplicate": len(with_dup),
            "share_with_near_duplicate": round(len(with_dup) / n_test, 4) if n_test else 0.0,
            "note": "the mean of the fold nets' probabilities; leaked: test images with a copy in train",
        },
        "duplicates": {"candidates": pairs.candidates, "checked_full_size": pairs.checked, "pairs": len(pairs.i),
                       "exact": int(pairs.exact.sum()),
                       "thresholds": {"candidate": duplicates.CANDIDATE, "embedding_weight": duplicates.EMB_WEIGHT,
                                      "half_size": duplicates.QUICK_MATCH, "pixel_high_pass": duplicates.PIXEL_MATCH,
                                      "exact_levels": duplicates.EXACT_LEVELS, "max_shift": duplicates.MAX_SHIFT}},
        "outliers": {"k": outliers.K_NEIGHBOURS, "reference": min(outliers.REFERENCE, n_train),
                     "robust_z": outliers.ROBUST_Z, "blank_std": outliers.BLANK_STD},
        "timings": timings,
    }
    return rows, summary


def write_findings(path: Path, rows: list[dict]) -> None:
    from cifarlab.data.findings import COLUMNS

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text(path, buf.getvalue())
