"""Statistics over repeated runs: summaries, and whether two sets of runs differ.

Inputs are 1-D sequences of floats (one value per run, e.g. test accuracies as
fractions). The t distribution's quantiles come from scipy; the statistics
themselves are computed here (tests check them against ``scipy.stats``).
"""

from __future__ import annotations

import math

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0  # fixed: the same runs give the same interval


def _t_quantile(df: float, confidence: float = CONFIDENCE) -> float:
    from scipy.stats import t

    return float(t.ppf(0.5 + confidence / 2, df))


def summarize(values) -> dict:
    """``n``, ``mean``, ``std`` (sample, ddof=1) and the t-based 95 % interval of the mean ``ci_low``/``ci_high``.

    With one value the spread is unknown: ``std`` and the interval are None.
    """
    x = np.asarray(values, dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": n, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(x.std(ddof=1))
    half = _t_quantile(n - 1) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def welch(a, b, confidence: float = CONFIDENCE) -> dict:
    """Welch's t-test for ``mean(b) - mean(a)`` (unequal variances).

    Returns ``diff``, its ``ci_low``/``ci_high``, ``t``, the Welch-Satterthwaite ``df`` and the
    two-sided ``p``. Needs at least 2 values in each group.
    """
    from scipy.stats import t as t_dist

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or b.size < 2:
        raise ValueError("Welch's test needs at least 2 runs on each side")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    diff = float(b.mean() - a.mean())
    se = math.sqrt(va + vb)
    if se == 0:  # identical constant groups: no spread to test against
        p = 1.0 if diff == 0 else 0.0
        return {"diff": diff, "ci_low": diff, "ci_high": diff, "t": math.copysign(math.inf, diff) if diff else 0.0,
                "df": float(a.size + b.size - 2), "p": p}
    df = (va + vb) ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    t = diff / se
    half = _t_quantile(df, confidence) * se
    return {"diff": diff, "ci_low": diff - half, "ci_high": diff + half, "t": float(t), "df": float(df),
            "p": float(2 * t_dist.sf(abs(t), df))}


def bootstrap(a, b, resamples: int = BOOTSTRAP_RESAMPLES, confidence: float = CONFIDENCE,
              seed: int = BOOTSTRAP_SEED) -> dict:
    """Percentile bootstrap interval of ``mean(b) - mean(a)``: each group resampled with replacement.

    ``p`` is the two-sided share of resampled differences on the other side of zero
    (twice the smaller tail, at most 1).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, a.size, (resamples, a.size))].mean(axis=1)
    mb = b[rng.integers(0, b.size, (resamples, b.size))].mean(axis=1)
    d = mb - ma
    lo, hi = np.quantile(d, [(1 - confidence) / 2, (1 + confidence) / 2])
    p = min(1.0, 2 * min(float((d <= 0).mean()), float((d >= 0).mean())))
    return {"diff": float(b.mean() - a.mean()), "ci_low": float(lo), "ci_high": float(hi), "p": p,
            "resamples": resamples}


def hedges_g(a, b) -> float | None:
    """Standardised difference ``(mean(b) - mean(a)) / pooled std``, corrected for small samples (Hedges' g)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    na, nb = a.size, b.size
    if na < 2 or nb < 2:
        return None
    pooled = math.sqrt(((na - 1) * a.var(ddof=1) + (nb - 1) * b.var(ddof=1)) / (na + nb - 2))
    if pooled == 0:
        return None
    d = (b.mean() - a.mean()) / pooled
    return float(d * (1 - 3 / (4 * (na + nb) - 9)))


def compare(a, b) -> dict:
    """Everything :func:`welch`, :func:`bootstrap` and :func:`hedges_g` say about ``b`` against ``a``."""
    return {"n_a": len(a), "n_b": len(b), "mean_a": float(np.mean(a)), "mean_b": float(np.mean(b)),
            "welch": welch(a, b), "bootstrap": bootstrap(a, b), "hedges_g": hedges_g(a, b)}


def sentence(result: dict, name_a: str = "A", name_b: str = "B", scale: float = 100.0, unit: str = "points") -> str:
    """E.g. "B is 0.21 ± 0.09 points better, p = 0.002, 10 vs 10 runs" (± the half-width of Welch's 95 % interval)."""
    w = result["welch"]
    diff, half = w["diff"] * scale, (w["ci_high"] - w["ci_low"]) / 2 * scale
    p = w["p"]
    ptext = "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
    verdict = "" if p < 0.05 else " (not significant at 5 %: within the noise)"
    how = (f"is {abs(diff):.2f} ± {half:.2f} {unit} {'better' if diff > 0 else 'worse'} than {name_a}" if diff
           else f"and {name_a} have the same mean (± {half:.2f} {unit})")
    return f"{name_b} {how}, {ptext}, {result['n_b']} vs {result['n_a']} runs{verdict}"
