"""Other ways to turn the fold nets into label-issue scores, on the fold files of a finished audit.

Run ``benchmarks/audit.py --noise-seed N --skip-clean --work DIR`` first (a noise seed other than
the benchmark's), then

    .venv/bin/python benchmarks/audit_combine.py --work DIR --noise-seed N

No training. Each way gives float32 ``(N, classes)`` probabilities or a float ``(N,)`` score of the
given label (lower: more suspect), scored against the planted flips twice: as the audit would
flag (cleanlab's ``low_self_confidence`` list on the probabilities; a bare score takes the count of
the audit's own list) and as the lowest 1,000 (the best a perfect count could do):

- **the audit's**: the mean of all ``k`` fold nets;
- **fewer nets**: the mean of the first ``m`` nets alone (how much each net adds);
- **other means of the nets**: the max, median, min, geometric mean or second largest of the
  nets' probabilities of the given label;
- **class-adjusted**: cleanlab's per-class thresholds subtracted first (``adjust_pred_probs``);
- **the neighbourhood**: each image's ``K`` nearest training images by the fold nets' embeddings
  (reduced as the duplicate search reduces them), itself left out; their given labels (``vote``:
  SimiFeat's idea, Zhu et al. 2022) or their net probabilities (``smooth``) mixed in at weight ``w``.

Writes ``results/audit-combine.json`` and the RESULTS.md section.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from _common import record
from audit_tuning import planted_arguments, planted_folds, scores


def neighbours(f: np.ndarray, k: int, chunk: int = 2048) -> np.ndarray:
    """int64 ``(N, k)``: each row's ``k`` nearest other rows of ``f`` (unit vectors ``(N, d)``) by cosine
    similarity, nearest first."""
    n = len(f)
    idx = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, chunk):
        s = f[start:start + chunk] @ f.T
        rows = np.arange(len(s))
        s[rows, start + rows] = -np.inf
        top = np.argpartition(s, n - k, axis=1)[:, n - k:]
        order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
        idx[start:start + len(s)] = np.take_along_axis(top, order, axis=1)
    return idx


def main() -> None:
    from cleanlab.rank import get_label_quality_scores

    from cifarlab.audit.duplicates import reduce_embeddings
    from cifarlab.audit.folds import _normalised, pool
    from cifarlab.audit.labels import all_nets, label_issues

    ap = planted_arguments("audit-combine")
    ap.add_argument("--k", default="10,30", help="neighbour counts")
    ap.add_argument("--weights", default="0.25,0.5", help="shares of the neighbourhood in the mix")
    a = ap.parse_args()
    y, flipped, folds = planted_folds(Path(a.work), a.flips, a.noise_seed,
                                      ("held_out", "probs", "train_probs", "emb_train"))
    n, c = len(y), int(y.max()) + 1
    per_net = [train_probs.astype(np.float32) for _, _, train_probs, _ in folds]  # held-out fold: plain prediction
    embs = [_normalised(emb) for *_, emb in folds]
    oof, insample = pool([f[:3] for f in folds], n, c)
    nets = all_nets(oof, insample, len(folds))
    del folds
    rows: list[dict] = []

    def row(way: str, probs: np.ndarray | None = None, given: np.ndarray | None = None) -> None:
        """Score ``probs`` as the audit would, or a bare ``given`` score with the audit's count."""
        r = {"way": way}
        if probs is not None:
            flagged = label_issues(y, probs)["index"]
            given = probs[np.arange(n), y]
            r["accuracy"] = round(float((probs.argmax(1) == y).mean()), 4)
        order = np.argsort(given, kind="stable")
        if probs is None:
            flagged = order[:rows[0]["flagged"]]
        r.update(scores(flagged, flipped), f1_lowest=scores(order[:a.flips], flipped)["f1"])
        rows.append(r)
        print(json.dumps(r), flush=True)

    row(f"the audit's: mean of the {len(per_net)} fold nets", nets)
    for m in range(1, len(per_net)):
        row(f"mean of the first {m} net{'s' if m > 1 else ''} alone (no TTA on its held-out fold)",
            np.mean(per_net[:m], axis=0))
    given = np.stack([p[np.arange(n), y] for p in per_net])  # (nets, N)
    for how, q in (("max", given.max(0)), ("median", np.median(given, 0)), ("min", given.min(0)),
                   ("geometric mean", np.exp(np.log(np.maximum(given, 1e-6)).mean(0))),
                   ("second largest", np.sort(given, 0)[-2])):
        row(f"the nets' {how} of the given label's probability", given=q)
    row("class-adjusted (cleanlab's adjust_pred_probs)",
        given=get_label_quality_scores(y, nets, method="self_confidence", adjust_pred_probs=True))
    t0 = time.perf_counter()
    ks = [int(v) for v in a.k.split(",")]
    nb = neighbours(reduce_embeddings(np.concatenate(embs, axis=1)), max(ks))
    del embs
    seconds = round(time.perf_counter() - t0, 1)
    onehot = np.eye(c, dtype=np.float32)[y]
    for k in ks:
        for name, p in (("vote", onehot[nb[:, :k]].mean(axis=1)), ("smooth", nets[nb[:, :k]].mean(axis=1))):
            for w in (float(v) for v in a.weights.split(",")):
                row(f"neighbourhood {name}, k = {k}, weight {w}", ((1 - w) * nets + w * p).astype(np.float32))
    table = ["| way | accuracy (noisy labels) | flagged | precision | recall | **F1** | F1 of the lowest 1,000 |",
             "|---|---|---|---|---|---|---|"]
    table += [f"| {r['way']} | {format(r['accuracy'], '.4f') if 'accuracy' in r else '-'} | {r['flagged']:,} | "
              f"{r['precision']:.3f} | {r['recall']:.3f} | **{r['f1']:.3f}** | {r['f1_lowest']:.3f} |" for r in rows]
    record(a.name, {"noise_seed": a.noise_seed, "flips": a.flips, "neighbour_seconds": seconds, "rows": rows},
           f"`benchmarks/audit_combine.py --noise-seed {a.noise_seed}`: ways to score label issues from the fold "
           f"files of a finished audit (no training); a bare score takes the audit's count. Neighbours in "
           f"{seconds} s.\n\n" + "\n".join(table))


if __name__ == "__main__":
    main()
