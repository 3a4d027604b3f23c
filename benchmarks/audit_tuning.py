"""Which cleanlab settings find planted label flips best, on the fold files of a finished audit.

Run ``benchmarks/audit.py --noise-seed N --skip-clean --name audit-tuning`` first (a noise seed
other than the benchmark's, so the settings are not tuned on the figures they are judged by), then

    .venv/bin/python benchmarks/audit_tuning.py --work DIR --noise-seed N

It reads the fold files from ``DIR/audit-noisy-seedN/folds/`` (no training), and prints precision,
recall and F1 against the planted flips for each ``find_label_issues`` setting on each source of
probabilities: out of fold (the one net that did not train on an image), in sample (the mean of the
``k - 1`` nets that did) and all ``k`` nets' mean; it writes them to ``results/audit-tuning-methods.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _common import SHARED_ARCHIVE, record
from audit import planted_copy

FILTERS = ("prune_by_noise_rate", "prune_by_class", "both", "confident_learning", "predicted_neq_given",
           "low_self_confidence", "low_normalized_margin")


def scores(flagged: np.ndarray, flipped: np.ndarray) -> dict:
    tp = int(np.isin(flagged, flipped).sum())
    p = tp / len(flagged) if len(flagged) else 0.0
    r = tp / len(flipped)
    return {"flagged": int(len(flagged)), "precision": round(p, 4), "recall": round(r, 4),
            "f1": round(2 * p * r / (p + r), 4) if tp else 0.0}


def planted_arguments(name: str) -> argparse.ArgumentParser:
    """The options of the scripts that read a finished audit of a planted copy: where, which copy, and
    the results name (``results/NAME.json`` and the RESULTS.md section)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="/tmp/cifarlab-audit-benchmark")
    ap.add_argument("--noise-seed", type=int, required=True)
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--name", default=name, help="results/NAME.json and the RESULTS.md section")
    return ap


def planted_folds(work: Path, flips: int, noise_seed: int, keys: tuple[str, ...]) -> tuple:
    """The planted copy's training labels (int ``(N,)``), the flipped positions (int64) and, for each fold
    file of its finished audit (``WORK/audit-noisy-seedN/folds/``), the arrays named by ``keys``."""
    from cifarlab.data import load_dataset

    noisy = work / f"cifar10-flipped-{flips}-seed{noise_seed}.tar"
    flipped = planted_copy(SHARED_ARCHIVE, noisy, flips, noise_seed)
    y = load_dataset(noisy, validate_on="test", quiet=True).y_train
    folds = []
    for f in sorted((work / f"audit-noisy-seed{noise_seed}" / "folds").glob("fold_*.npz")):
        with np.load(f) as z:
            folds.append(tuple(z[k] for k in keys))
    return y, flipped, folds


def main() -> None:
    from cifarlab.audit.folds import pool
    from cifarlab.audit.labels import all_nets

    ap = planted_arguments("audit-tuning-methods")
    a = ap.parse_args()
    y, flipped, folds = planted_folds(Path(a.work), a.flips, a.noise_seed, ("held_out", "probs", "train_probs"))
    oof, insample = pool(folds, len(y), 10)
    sources = {"out of fold": oof, "in sample": insample, "all nets": all_nets(oof, insample, len(folds))}
    rows = []
    for source, probs in sources.items():
        rows += method_rows(y, probs, flipped, a.flips, source)
    for r in rows:
        print(json.dumps(r))
    table = ["| probabilities | find_label_issues setting | flagged | precision | recall | F1 |", "|---|---|---|---|---|---|"]
    table += [f"| {r['probs']} | {r['filter_by']}" + (f", frac_noise {r['frac_noise']}" if "frac_noise" in r else f", {r['count']}")
              + f" | {r['flagged']:,} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |" for r in rows]
    accuracy = {name: round(float((p.argmax(1) == y).mean()), 4) for name, p in sources.items()}
    record(a.name, {"noise_seed": a.noise_seed, "flips": a.flips, "accuracy": accuracy, "rows": rows},
           f"`benchmarks/audit_tuning.py --noise-seed {a.noise_seed} --work {a.work}`: cleanlab settings on the fold files of the "
           f"tuning audit; accuracy on the noisy labels: " + ", ".join(f"{k} {v:.4f}" for k, v in accuracy.items())
           + ".\n\n" + "\n".join(table))


def method_rows(y, probs, flipped, flips: int, source: str) -> list[dict]:
    from cleanlab.count import num_label_issues
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    rows = []
    for filter_by in FILTERS:
        for frac in (1.0, 0.8) if filter_by.startswith("prune") or filter_by == "both" else (1.0,):
            idx = find_label_issues(y, probs, filter_by=filter_by, frac_noise=frac)
            flagged = np.flatnonzero(idx) if idx.dtype == bool else np.asarray(idx)
            rows.append({"probs": source, "filter_by": filter_by, "frac_noise": frac, **scores(flagged, flipped)})
    for method in ("self_confidence", "normalized_margin", "confidence_weighted_entropy"):
        q = get_label_quality_scores(y, probs, method=method)
        order = np.argsort(q, kind="stable")
        for est in ("off_diagonal", "off_diagonal_calibrated"):
            n = num_label_issues(y, probs, estimation_method=est)
            rows.append({"probs": source, "filter_by": f"lowest {method}", "count": f"num_label_issues({est}) = {n}",
                         **scores(order[:n], flipped)})
        rows.append({"probs": source, "filter_by": f"lowest {method}", "count": f"the planted number ({flips})",
                     **scores(order[:flips], flipped)})
    return rows


if __name__ == "__main__":
    main()
