"""What the audit's test-time augmentation of the held-out fold is worth: F1 over several noise seeds.

``cifarlab audit`` predicts each held-out fold with its recipe's test-time augmentation (quick: the
mirror and two shifts, 6 passes). The held-out net is one of the k nets whose mean scores the labels,
so the augmentation may not earn its passes. For each ``--noise-seeds`` copy with planted flips this
trains the audit's folds once (by ``audit/folds.fold_trainer``, as the audit does: its recipe, epochs,
fold assignment and seeds) and scores cleanlab's issue list against the flips with each way of
predicting the held-out images; the in-sample probabilities are the audit's. A finished seed is a line of ``WORK/held-out-tta.jsonl``, so
a killed run goes on from the next seed. Use noise seeds other than the benchmark's (2026).
``--epochs`` trains the folds longer or shorter than the audit's default (each setting keeps its own
rows file), ``--variants`` scores only some of the predictions (the first is always flip_translate).

    .venv/bin/python benchmarks/audit_held_out_tta.py --noise-seeds 7,11,12,13,14 [--work DIR]
    .venv/bin/python benchmarks/audit_held_out_tta.py --epochs 10 --variants flip_translate --name audit-epochs10
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from _common import SHARED_ARCHIVE, record
from audit import planted_copy
from audit_tuning import scores

# (mode, share) as cifarlab.inference.tta.tta_predict takes them; the first is quick's own.
VARIANTS = {"flip_translate": ("flip_translate", 1.0), "flip_translate, least confident quarter": ("flip_translate", 0.25),
            "flip": ("flip", 1.0), "none": ("none", 1.0)}


def one_seed(noise_seed: int, work: Path, flips: int, epochs: float | None, variants: dict) -> dict:
    """Train the audit's folds on a planted copy; F1 and seconds of each held-out prediction."""
    from cifarlab.audit.folds import assign_folds, embedder, fold_trainer, pool
    from cifarlab.audit.labels import find
    from cifarlab.audit.run import AuditConfig, check
    from cifarlab.data import load_dataset
    from cifarlab.inference.tta import tta_predict
    from cifarlab.training import precision as prec

    noisy = work / f"cifar10-flipped-{flips}-seed{noise_seed}.tar"
    flipped = planted_copy(SHARED_ARCHIVE, noisy, flips, noise_seed)
    ds = load_dataset(noisy, validate_on="test", quiet=True)
    x, y = ds.x_train, ds.y_train
    cfg = AuditConfig(data=str(noisy), epochs=epochs)  # the audit's defaults: folds, seed, recipe
    recipe, spec = check(cfg)
    prec.apply(prec.resolve(recipe.precision))
    fold = assign_folds(y, cfg.folds, cfg.seed)
    oof = {v: np.zeros((len(y), ds.num_classes), np.float32) for v in variants}
    seconds, parts, training = dict.fromkeys(variants, 0.0), [], 0.0
    for k in range(cfg.folds):
        trainer, held_out = fold_trainer(k, fold, x, y, recipe, spec, ds.num_classes, cfg.seed)
        t0 = time.perf_counter()
        trainer.fit(recipe.epochs)
        training += time.perf_counter() - t0
        for v, (mode, share) in variants.items():
            t0 = time.perf_counter()
            oof[v][held_out] = tta_predict(trainer.logits, x[held_out], mode, share)
            seconds[v] += time.perf_counter() - t0
        parts.append((held_out, embedder(trainer.model)(x)[1]))
        del trainer
    row = {"noise_seed": noise_seed, "epochs": recipe.epochs, "training_seconds": round(training, 1),
           "seconds": {v: round(s, 1) for v, s in seconds.items()}}
    for v in variants:
        insample = pool([(h, oof[v][h], p) for h, p in parts], len(y), ds.num_classes)[1]
        issues, _ = find(y, oof[v], insample, cfg.folds)
        row[v] = {**scores(np.asarray(issues["index"]), flipped),
                  "oof_accuracy": round(float((oof[v].argmax(1) == y).mean()), 4)}
    noisy.unlink()
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--noise-seeds", default="7,11,12,13,14")
    ap.add_argument("--flips", type=int, default=1000)
    ap.add_argument("--work", default="/tmp/cifarlab-audit-tta")
    ap.add_argument("--name", default="audit-held-out-tta")
    ap.add_argument("--epochs", type=float, help="epochs a fold (default: the audit's)")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                    help="held-out predictions to score (flip_translate always)")
    a = ap.parse_args()
    variants = {v: VARIANTS[v] for v in VARIANTS if v in a.variants or v == "flip_translate"}
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    rows_file = work / ("held-out-tta.jsonl" if a.epochs is None else f"held-out-tta-epochs{a.epochs:g}.jsonl")
    done = {r["noise_seed"]: r for r in map(json.loads, rows_file.read_text().splitlines())} if rows_file.exists() else {}
    from cifarlab._tf import import_quietly

    import_quietly()
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # each fold's new functions trace afresh, which TensorFlow calls "retracing"
    seeds = [int(s) for s in a.noise_seeds.split(",")]
    for s in seeds:
        if s not in done:
            done[s] = one_seed(s, work, a.flips, a.epochs, variants)
            with rows_file.open("a") as f:  # one whole line per finished seed
                f.write(json.dumps(done[s]) + "\n")
            print(json.dumps(done[s]), flush=True)
    rows = [done[s] for s in seeds]
    base = [r["flip_translate"]["f1"] for r in rows]
    table = ["| held-out prediction | F1 per noise seed | mean (sd) | minus flip_translate: mean (sd) | "
             "seconds an audit |", "|---|---|---|---|---|"]
    for v in variants:
        f1 = [r[v]["f1"] for r in rows]
        d = [a - b for a, b in zip(f1, base)]
        table.append(f"| {v} | {', '.join(f'{f:.4f}' for f in f1)} | {statistics.mean(f1):.4f} "
                     f"({statistics.stdev(f1):.4f}) | {statistics.mean(d):+.4f} ({statistics.stdev(d):.4f}) | "
                     f"{statistics.mean(r['seconds'][v] for r in rows):.1f} |")
    epochs = "defaults" if a.epochs is None else f"defaults but {a.epochs:g} epochs"
    table += ["", "| noise seed | epochs | fold training s (5 folds) | out-of-fold accuracy | flagged | precision | recall |",
              "|---|---|---|---|---|---|---|"]
    table += [f"| {r['noise_seed']} | {r.get('epochs', '')} | {r.get('training_seconds', '')} | "
              f"{r['flip_translate']['oof_accuracy']} | {r['flip_translate']['flagged']} | "
              f"{r['flip_translate']['precision']} | {r['flip_translate']['recall']} |" for r in rows]
    flags = "" if a.epochs is None else f" --epochs {a.epochs:g} --variants " + " ".join(map(repr, variants))
    record(a.name, {"noise_seeds": [r["noise_seed"] for r in rows], "flips": a.flips, "epochs": a.epochs, "rows": rows},
           f"`benchmarks/audit_held_out_tta.py --noise-seeds {a.noise_seeds}{flags}`: the audit's folds ({epochs}) trained "
           f"once per noise seed, {a.flips:,} planted flips, label issues scored with each way of predicting the "
           "held-out fold (the in-sample probabilities as the audit's).\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
