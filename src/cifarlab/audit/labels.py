"""Label issues: confident learning (Northcutt et al., 2021) through ``cleanlab``, on out-of-sample probabilities."""

from __future__ import annotations

import numpy as np

# cleanlab's find_label_issues settings; see docs/audit.md for what was tried on planted noise.
FILTER_BY = "prune_by_noise_rate"
RANK_BY = "self_confidence"


def label_issues(y: np.ndarray, probs: np.ndarray, filter_by: str = FILTER_BY, rank_by: str = RANK_BY,
                 frac_noise: float = 1.0) -> dict:
    """Images whose given label ``y`` (int ``(N,)``) is likely wrong under ``probs`` (float ``(N, K)``).

    Returns ``index`` int64 positions ranked most likely wrong first, ``suggested`` int64 the most
    probable other label of each, ``score`` float in [0, 1]: one minus cleanlab's label-quality score
    (``rank_by``) of the given label, so higher is more suspect.
    """
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    probs = np.asarray(probs, dtype=np.float32)
    idx = find_label_issues(labels=y, pred_probs=probs, filter_by=filter_by, frac_noise=frac_noise,
                            return_indices_ranked_by=rank_by)
    idx = np.asarray(idx, dtype=np.int64)
    quality = get_label_quality_scores(y, probs, method=rank_by)
    others = probs[idx].copy()
    others[np.arange(len(idx)), y[idx]] = -1.0  # the suggestion is never the given label
    return {"index": idx, "suggested": others.argmax(1).astype(np.int64), "score": 1.0 - quality[idx]}
