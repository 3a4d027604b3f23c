"""Label issues: confident learning (Northcutt et al., 2021) through ``cleanlab``, on the fold nets' probabilities."""

from __future__ import annotations

import numpy as np

# cleanlab's find_label_issues settings: the images of lowest self-confidence (the probability of the
# given label), as many as the confident joint counts off its diagonal.
FILTER_BY = "low_self_confidence"
RANK_BY = "self_confidence"
# The probabilities: the mean of all k fold nets (the one that held the image out and the k - 1 that
# trained on it). They are more accurate than the out-of-fold net alone, so the confident joint
# overcounts less; but nets memorise the labels of a small dataset, and then only the out-of-fold net
# can doubt one. Memorised: more than MEMORISED_MAX of the out-of-fold issues get over FITTED for their
# given label from the nets that trained on them (docs/audit.md, "which probabilities").
FITTED = 0.5
MEMORISED_MAX = 0.5


def all_nets(out_of_fold: np.ndarray, insample: np.ndarray, k: int) -> np.ndarray:
    """float32 ``(N, K)``: the mean of all ``k`` fold nets, from the out-of-fold net's probabilities
    and the mean of the ``k - 1`` that trained on each image."""
    return ((out_of_fold + (k - 1) * insample) / k).astype(np.float32)


def find(y: np.ndarray, out_of_fold: np.ndarray, insample: np.ndarray, k: int) -> tuple[dict, dict]:
    """Label issues (as :func:`label_issues` returns them) on the probabilities chosen above, and what
    was chosen and why. ``out_of_fold``: each image's float ``(N, K)`` probabilities from the net that
    held it out; ``insample``: the mean of the ``k - 1`` nets that trained on it."""
    oof_issues = label_issues(y, out_of_fold)
    idx = oof_issues["index"]
    fitted = float((insample[idx, y[idx]] > FITTED).mean()) if len(idx) else 0.0
    info = {"memorised_share": round(fitted, 4), "memorised_max": MEMORISED_MAX}
    if fitted > MEMORISED_MAX:
        return oof_issues, {"probabilities": "out-of-fold net alone (the nets memorised their labels)", **info}
    return label_issues(y, all_nets(out_of_fold, insample, k)), {"probabilities": f"mean of the {k} fold nets", **info}


def label_issues(y: np.ndarray, probs: np.ndarray, filter_by: str = FILTER_BY, rank_by: str = RANK_BY) -> dict:
    """Images whose given label ``y`` (int ``(N,)``) is likely wrong under ``probs`` (float ``(N, K)``).

    Returns ``index`` int64 positions ranked most likely wrong first, ``suggested`` int64 the most
    probable other label of each, ``score`` float in [0, 1]: one minus cleanlab's label-quality score
    (``rank_by``) of the given label, so higher is more suspect.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(probs, dtype=np.float32)
    idx = find_label_issues(labels=y, pred_probs=probs, filter_by=filter_by, return_indices_ranked_by=rank_by)
    idx = np.asarray(idx, dtype=np.int64)
    quality = get_label_quality_scores(y, probs, method=rank_by)
    others = probs[idx].copy()
    others[np.arange(len(idx)), y[idx]] = -1.0  # the suggestion is never the given label
    return {"index": idx, "suggested": others.argmax(1).astype(np.int64), "score": 1.0 - quality[idx]}
