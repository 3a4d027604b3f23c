"""Which per-image signal ranks planted label flips best: a probe for ``cifarlab audit``'s defaults.

The audit ranks images by the self-confidence of their given label under the fold nets'
probabilities. This probe trains the same folds as ``cifarlab audit`` (its recipe, epochs, fold
assignment and seeds) on a copy with planted flips and keeps, for every training image, more than
the audit keeps: the out-of-fold probabilities with and without test-time augmentation, the final
nets' probabilities with and without a mirrored view, and snapshots after earlier epochs (the
idea of "area under the margin", Pleiss et al. 2020: a wrong label is learnt late, if at all).
It then scores each signal against the planted flips: F1 of cleanlab's default issue list and of
the lowest-scoring ``--flips`` images. Use a noise seed other than the benchmark's.

    .venv/bin/python benchmarks/audit_signals.py --noise-seed 7 [--epochs 5] [--work DIR]
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from _common import SHARED_ARCHIVE, record
from audit import planted_copy
from audit_tuning import planted_arguments, scores


def probe_fold(k, fold, x, y, recipe, spec, snapshot_epochs, seed: int) -> dict:
    """Train fold ``k`` as ``cifarlab audit`` does; float16 ``(N, classes)`` probabilities of every image."""
    from cifarlab.audit.folds import fold_trainer
    from cifarlab.inference.predict import softmax

    trainer, held_out = fold_trainer(k, fold, x, y, recipe, spec, 10, seed)
    snaps = {}

    def on_epoch(row):  # row["epoch"] counts from 1
        if row["epoch"] in snapshot_epochs:
            snaps[f"epoch{row['epoch']}"] = trainer.predict(x).astype(np.float16)

    t0 = time.perf_counter()
    trainer.fit(recipe.epochs, on_epoch=on_epoch)
    seconds = time.perf_counter() - t0
    final = trainer.predict(x)
    mirrored = softmax(trainer.logits(x, flip=True))
    return {"held_out": held_out, "oof_tta": trainer.predict_tta(x[held_out]).astype(np.float32),
            "final": final.astype(np.float16), "final_flip": ((final + mirrored) / 2).astype(np.float16),
            "seconds": seconds, **snaps}


def signals(folds: list[dict], n: int, k: int, snapshot_epochs) -> dict[str, np.ndarray]:
    """float32 ``(n, 10)`` probabilities per signal, pooled over the folds as the audit pools them."""
    from cifarlab.audit.folds import pool
    from cifarlab.audit.labels import all_nets

    def pooled(held_out_probs, name):  # (out of fold, in sample), as cifarlab.audit.folds.pool gives them
        return pool([(f["held_out"], held_out_probs(f), f[name].astype(np.float32)) for f in folds], n, 10)

    oof, _ = pooled(lambda f: f["oof_tta"], "final")
    oof_plain, _ = pooled(lambda f: f["final"][f["held_out"]], "final")
    insample = {name: pooled(lambda f: f["oof_tta"], name)[1]
                for name in ["final", "final_flip", *(f"epoch{e}" for e in snapshot_epochs)]}
    out = {"out of fold (TTA)": oof, "out of fold (plain)": oof_plain}
    for name, p in insample.items():
        out[f"in sample {name}"] = p
        out[f"all nets {name}"] = all_nets(oof, p, k)
    snapshots = np.mean([p for name, p in insample.items() if name != "final_flip"], axis=0)
    out["in sample, mean over snapshots"] = snapshots
    out["all nets, mean over snapshots"] = all_nets(oof, snapshots, k)
    return out


def main() -> None:
    from cifarlab.audit.folds import assign_folds
    from cifarlab.audit.labels import label_issues
    from cifarlab.audit.run import AuditConfig, check
    from cifarlab.data import load_dataset
    from cifarlab.fileio import atomic_path

    ap = planted_arguments("audit-signals")
    ap.add_argument("--epochs", type=float, default=None, help="the audit's default when left out")
    ap.add_argument("--snapshots", default="2,3,4", help="epochs after which to keep every image's probabilities")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--limit", type=int, default=None, help="only the first LIMIT training images (a dry run)")
    a = ap.parse_args()
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    noisy = work / f"cifar10-flipped-{a.flips}-seed{a.noise_seed}.tar"
    flipped = planted_copy(SHARED_ARCHIVE, noisy, a.flips, a.noise_seed)
    ds = load_dataset(noisy, validate_on="test", quiet=True)
    x, y = ds.x_train[:a.limit], ds.y_train[:a.limit]
    flipped = flipped[flipped < len(y)]
    from cifarlab._tf import import_quietly

    import_quietly()
    from cifarlab.training import precision as prec

    recipe, spec = check(AuditConfig(data=str(noisy), epochs=a.epochs))
    prec.apply(prec.resolve(recipe.precision))
    snapshot_epochs = [int(e) for e in a.snapshots.split(",") if e and int(e) < recipe.epochs]
    fold = assign_folds(y, a.folds, 0)
    folds = []
    for k in range(a.folds):
        path = work / f"signals-seed{a.noise_seed}-e{recipe.epochs}-fold{k}.npz"
        if not path.exists():
            r = probe_fold(k, fold, x, y, recipe, spec, snapshot_epochs, 0)
            with atomic_path(path, suffix=".npz") as tmp:
                np.savez(tmp, **r)
            print(f"fold {k}: {r['seconds']:.0f} s", flush=True)
        with np.load(path) as z:
            folds.append({name: z[name] for name in z.files})
    rows = []
    for name, p in signals(folds, len(y), a.folds, snapshot_epochs).items():
        issues = label_issues(y, p)
        order = np.argsort(p[np.arange(len(y)), y], kind="stable")
        rows.append({"signal": name, "accuracy": round(float((p.argmax(1) == y).mean()), 4),
                     "cleanlab": scores(np.asarray(issues["index"]), flipped),
                     "lowest": scores(order[:len(flipped)], flipped)})
        print(rows[-1], flush=True)
    table = ["| probabilities | accuracy (noisy labels) | flagged | precision | recall | **F1** | F1 of the lowest "
             f"{a.flips:,} |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['signal']} | {r['accuracy']:.4f} | {r['cleanlab']['flagged']:,} | {r['cleanlab']['precision']:.3f} | "
              f"{r['cleanlab']['recall']:.3f} | **{r['cleanlab']['f1']:.3f}** | {r['lowest']['f1']:.3f} |" for r in rows]
    seconds = [round(float(f["seconds"]), 1) for f in folds]
    record(a.name, {"noise_seed": a.noise_seed, "flips": a.flips, "epochs": recipe.epochs,
                    "snapshots": snapshot_epochs, "fold_seconds": seconds, "rows": rows},
           f"`benchmarks/audit_signals.py --noise-seed {a.noise_seed}`: the audit's folds ({recipe.name}, "
           f"{recipe.epochs} epochs, {a.folds} folds; fold training seconds {seconds}), scored against "
           f"{a.flips:,} planted flips with cleanlab's default issue list (`label_issues`) on each source of "
           "probabilities. In sample: the mean of the k - 1 nets that trained on an image; all nets: with the "
           "out-of-fold net (TTA) too; epochN: the nets after epoch N; flip: averaged with the mirrored image.\n\n"
           + "\n".join(table))


if __name__ == "__main__":
    main()
