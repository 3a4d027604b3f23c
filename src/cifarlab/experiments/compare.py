"""``cifarlab compare SWEEP_A SWEEP_B``: is B better than A, or is it noise?

Reads the finished trials of two sweep folders (:mod:`cifarlab.experiments.sweep`),
and reports the difference of the means of one final metric (B - A) with Welch's
t-test and a bootstrap, Hedges' g, and a plain sentence; optionally an HTML page
with the two distributions side by side.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.experiments import stats
from cifarlab.experiments.sweep import headline_metric, load_trials, read_spec, summary_frame


def _values(folder: Path, metric: str | None) -> tuple[np.ndarray, str, dict]:
    read_spec(folder)
    trials = load_trials(folder)
    frame = summary_frame(trials)
    metric = metric or headline_metric(frame.columns, trials)
    if metric not in frame:
        have = ", ".join(c for c in frame.columns if c not in ("trial", "seed")) or "none (no finished trial)"
        raise CifarlabError(f"{folder} has no metric {metric!r}; its trials have {have}")
    return frame[metric].dropna().to_numpy(np.float64), metric, read_spec(folder)


def compare(sweep_a: str | os.PathLike, sweep_b: str | os.PathLike, metric: str | None = None,
            html: str | os.PathLike | None = None) -> dict:
    """The comparison as a dict (``stats.compare`` plus ``metric`` and ``sentence``); writes ``html`` if given."""
    a_dir, b_dir = Path(sweep_a), Path(sweep_b)
    b, metric_b, spec_b = _values(b_dir, metric)
    a, metric, spec_a = _values(a_dir, metric or metric_b)
    if metric_b != metric:
        raise CifarlabError(f"{a_dir} and {b_dir} report different metrics; choose one with --metric")
    if len(a) < 2 or len(b) < 2:
        raise CifarlabError(f"a comparison needs at least 2 finished runs on each side ({len(a)} in {a_dir}, "
                            f"{len(b)} in {b_dir})")
    result = stats.compare(a, b)
    is_acc = metric.endswith("accuracy")
    name_a, name_b = a_dir.name, b_dir.name
    result.update(metric=metric, a=str(a_dir), b=str(b_dir), values_a=a.tolist(), values_b=b.tolist(),
                  sentence=stats.sentence(result, name_a, name_b, scale=100 if is_acc else 1,
                                          unit="points" if is_acc else metric.rsplit("_", 1)[-1]))
    if not is_acc and metric.endswith(("loss", "seconds")):  # lower is better: say so plainly
        result["sentence"] = result["sentence"].replace(" better ", " higher ").replace(" worse ", " lower ")
    if html:
        from cifarlab.experiments.html import compare_html
        from cifarlab.fileio import write_text

        sides = [("A", f"{a_dir} ({spec_a['train']['recipe']}, {_over(spec_a)})"),
                 ("B", f"{b_dir} ({spec_b['train']['recipe']}, {_over(spec_b)})"),
                 ("A mean ± std", _ms(a, is_acc)), ("B mean ± std", _ms(b, is_acc))]
        write_text(html, compare_html(result, a, b, name_a, name_b, metric, result["sentence"], sides))
        result["html"] = str(html)
    return result


def _over(spec: dict) -> str:
    o = spec["train"].get("overrides") or {}
    return ", ".join(f"{k}={v}" for k, v in o.items()) or "no overrides"


def _ms(v: np.ndarray, pct: bool) -> str:
    s = 100 if pct else 1
    return f"{s * v.mean():.3f} ± {s * v.std(ddof=1):.3f}{' %' if pct else ''} ({len(v)} runs)"
