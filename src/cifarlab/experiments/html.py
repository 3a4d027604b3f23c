"""The sweep and comparison pages: self-contained HTML in the run report's style.

Figures are drawn with the run report's helpers (``evaluation.plots`` for the figure
and its atomic PNG, ``evaluation.report.figure_uri`` to embed it), and the pages share
the report's stylesheet (``evaluation/templates/style.html.j2``).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np

CURVES = (("accuracy", "accuracy"), ("loss", "loss"))


def _env():
    import jinja2

    loader = jinja2.ChoiceLoader([jinja2.PackageLoader("cifarlab.experiments", "templates"),
                                  jinja2.PackageLoader("cifarlab.evaluation", "templates")])
    return jinja2.Environment(loader=loader, autoescape=jinja2.select_autoescape(default=True),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _common() -> dict:
    from cifarlab import __version__

    return {"version": __version__, "generated": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def plot_bands(trials: list[dict], path: Path) -> Path:
    """Per-epoch accuracy and loss: each trial thin, the mean over trials thick with a ± std band."""
    import pandas as pd

    from cifarlab.evaluation.plots import _plt, _save

    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    h = pd.concat([t["history"].assign(trial=t["name"]) for t in trials], ignore_index=True)
    for ax, (metric, label) in zip(axes, CURVES):
        for i, (col, name) in enumerate(((metric, "train"), (f"val_{metric}", "validation"))):
            if col not in h:
                continue
            colour = f"C{i}"
            for _, one in h.groupby("trial"):
                ax.plot(one["epoch"], one[col], color=colour, alpha=0.25, linewidth=0.8)
            g = h.groupby("epoch")[col]
            mean, std = g.mean(), g.std(ddof=1).fillna(0)
            ax.plot(mean.index, mean.values, color=colour, marker="o", linewidth=2, label=f"{name} (mean)")
            ax.fill_between(mean.index, mean - std, mean + std, color=colour, alpha=0.2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_title(f"{label} per epoch, {len(trials)} trials")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_distribution(values: np.ndarray, seconds: np.ndarray, names: list[str], metric: str, path: Path) -> Path:
    """Final ``metric`` per trial (strip plot with the mean and its 95 % interval), and seconds per trial."""
    from cifarlab.evaluation.plots import _plt, _save
    from cifarlab.experiments.stats import summarize

    plt = _plt()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 3.6))
    _strip(ax, [("trials", 100 * values)], summarize)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"final {metric}")
    bx.bar(np.arange(len(seconds)), seconds, color="#4c78a8")
    bx.set_xticks(np.arange(len(seconds)), names, rotation=45 if len(names) > 8 else 0, fontsize=8)
    bx.set_ylabel("training seconds")
    bx.set_title("time per trial")
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, path)


def _strip(ax, groups, summarize) -> None:
    """Dots per group with the mean and its 95 % interval as an error bar."""
    rng = np.random.default_rng(0)  # fixed jitter: the same page for the same runs
    for i, (name, v) in enumerate(groups):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, color=f"C{i}", alpha=0.7, zorder=2)
        s = summarize(v)
        if s["ci_low"] is not None:
            ax.errorbar(i + 0.28, s["mean"], yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]],
                        fmt="D", color="black", capsize=6, zorder=3)
    ax.set_xticks(range(len(groups)), [name for name, _ in groups])
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.grid(alpha=0.3, axis="y")


def plot_pair(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, metric: str, path: Path) -> Path:
    from cifarlab.evaluation.plots import _plt, _save
    from cifarlab.experiments.stats import summarize

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4))
    _strip(ax, [(f"A: {name_a}", 100 * a), (f"B: {name_b}", 100 * b)], summarize)
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"final {metric} per run")
    return _save(fig, path)


def _fmt(name: str, v) -> str:
    if v is None or v != v:
        return "–"
    if name.endswith("accuracy"):
        return f"{100 * v:.2f} %"
    if name.endswith("seconds"):
        return f"{v:.1f} s"
    return f"{v:.4g}"


def sweep_html(summary: dict, frame, trials: list[dict]) -> str:
    """The sweep page: final metrics with intervals, per-epoch bands, the headline's distribution, the trials."""
    from cifarlab.evaluation.report import figure_uri

    head = summary["headline"]
    metric_rows = []
    for name, s in summary["metrics"].items():
        spread = (lambda v: f"{100 * v:.2f}") if name.endswith("accuracy") else (lambda v: _fmt(name, v))
        metric_rows.append({"name": name, "mean": _fmt(name, s["mean"]),
                            "std": "–" if s["std"] is None else spread(s["std"]),
                            "ci": "–" if s["ci_low"] is None else f"{_fmt(name, s['ci_low'])} – {_fmt(name, s['ci_high'])}",
                            "n": s["n"]})
    hs = summary["metrics"].get(head) or {}
    head_text = _fmt(head, hs.get("mean")) + (
        f" (95 % CI {_fmt(head, hs['ci_low'])} – {_fmt(head, hs['ci_high'])})" if hs.get("ci_low") is not None else "")
    spec = summary["spec"]
    env = summary.get("environment") or {}
    settings = [("recipe", spec["train"]["recipe"]), ("overrides", _overrides(spec["train"].get("overrides"))),
                ("data", spec["train"].get("data") or "default"), ("training images", spec["train"].get("limit") or "all"),
                ("epochs", spec["train"].get("epochs") or "the recipe's"),
                ("CPU", env.get("cpu_model", "?")), ("GPUs", ", ".join(env.get("gpus") or []) or "none")]
    columns = list(frame.columns)
    rows = [[v if c in ("trial", "seed") else _fmt(c, v) for c, v in zip(columns, r)]
            for r in frame.itertuples(index=False)]
    curves = distribution = None
    if trials:
        curves = figure_uri(lambda p: plot_bands(trials, p))
        secs = frame["train_seconds"].to_numpy(float) if "train_seconds" in frame else np.zeros(len(frame))
        distribution = figure_uri(lambda p: plot_distribution(frame[head].to_numpy(float), secs, list(frame["trial"]), head, p))
    return _env().get_template("sweep.html.j2").render(
        title=f"cifarlab sweep: {Path(summary['sweep']).name}", spec=spec, overrides=_overrides(spec["train"].get("overrides")),
        n=summary["trials"], seeds=", ".join(map(str, summary["seeds"])) or "none", missing=summary["missing"],
        headline=head, head_text=head_text, metric_rows=metric_rows, setting_rows=settings,
        curves=curves, distribution=distribution, columns=columns, rows=rows, path=summary["sweep"], **_common())


def _overrides(o: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (o or {}).items()) or "none"


def compare_html(result: dict, a: np.ndarray, b: np.ndarray, name_a: str, name_b: str, metric: str,
                 sentence: str, sides: list[tuple[str, str]]) -> str:
    from cifarlab.evaluation.report import figure_uri

    w, bs = result["welch"], result["bootstrap"]
    pts = lambda v: f"{100 * v:+.3f}"  # noqa: E731
    g = result["hedges_g"]
    headline = [("difference of means (points)", pts(w["diff"])),
                ("95 % CI (Welch)", f"{pts(w['ci_low'])} … {pts(w['ci_high'])}"),
                ("p (Welch)", f"{w['p']:.3g}"), ("effect size (Hedges' g)", "–" if g is None else f"{g:.2f}"),
                ("runs", f"{result['n_a']} vs {result['n_b']}")]
    rows = [("Welch's t-test", pts(w["diff"]), f"{pts(w['ci_low'])} … {pts(w['ci_high'])}", f"{w['p']:.3g}"),
            (f"bootstrap ({bs['resamples']:,} resamples)", pts(bs["diff"]),
             f"{pts(bs['ci_low'])} … {pts(bs['ci_high'])}", f"{bs['p']:.3g}")]
    return _env().get_template("compare.html.j2").render(
        title=f"cifarlab compare: {name_a} vs {name_b}", sentence=sentence, metric=metric, headline=headline,
        test_rows=rows, side_rows=sides, figure=figure_uri(lambda p: plot_pair(a, b, name_a, name_b, metric, p)),
        **_common())
