"""``cifarlab sweep``: one recipe over many seeds, with honest statistics.

A sweep folder holds ``sweep.json`` (what was asked), one ordinary run directory per
seed (``seed-0/``, ``seed-1/``, ... : each a ``cifarlab train`` run, openable with
``cifarlab report``), ``logs/`` (each trial's stderr), and the summary: ``summary.csv``
(one row per finished trial), ``summary.json`` (mean, std and 95 % interval of every
final metric, and the per-epoch means) and ``sweep.html``. A trial is finished when its
``metrics.json`` exists; rerunning the same command trains only the others (an
interrupted one resumes from its checkpoint).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from cifarlab.errors import CifarlabError
from cifarlab.fileio import write_json, write_text

SPEC = "sweep.json"
SUMMARY_CSV, SUMMARY_JSON, HTML = "summary.csv", "summary.json", "sweep.html"
# TrainConfig fields a sweep sets for every trial (the seed is per trial).
TRAIN_FIELDS = ("recipe", "model", "data", "dataset", "limit", "epochs", "coarse", "overrides")


def parse_seeds(text: str) -> list[int]:
    """``"0-9"``, ``"0,2,5"`` or ``"0-4,10"`` as a sorted list of distinct seeds."""
    seeds: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise CifarlabError(f"--seeds takes N, A-B or a comma-separated list of them, not {text!r}")
        lo = int(m.group(1))
        seeds.update(range(lo, int(m.group(2) or lo) + 1))
    return sorted(seeds)


def absolute(path: str | None) -> str | None:
    """A local path made absolute (workers run elsewhere: Ray's have their own working folder)."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


def trial_dir(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}"


def is_finished(run_dir: Path) -> bool:
    return (run_dir / "metrics.json").is_file()


def check_spec(out: Path, spec: dict) -> dict:
    """The sweep's ``sweep.json``: written if new; for an existing sweep, the same settings or an error.

    Seeds may be added on a rerun; the saved spec then holds the union.
    """
    path = out / SPEC
    if not path.exists():
        if out.exists() and any(out.iterdir()):
            raise CifarlabError(f"{out} already exists and is not a sweep folder; choose another -o")
        return spec
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CifarlabError(f"{path} is unreadable ({e}); choose another -o") from None
    diff = [k for k in TRAIN_FIELDS if before.get("train", {}).get(k) != spec["train"].get(k)]
    if diff:
        raise CifarlabError(f"{out} holds a sweep with other settings ({', '.join(diff)} differ); "
                            "rerun it with the same settings or choose another -o")
    return {**spec, "seeds": sorted(set(before.get("seeds", [])) | set(spec["seeds"]))}


def sweep(recipe: str, seeds: list[int], out: str | os.PathLike, overrides: dict | None = None,
          data: str | None = None, dataset: str = "cifar10", limit: int | None = None, epochs: int | None = None,
          model: str | None = None, coarse: bool = False, report: bool = True, workers: int | None = None,
          ray: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float = 0, retries: int = 2,
          tracker=None, quiet: bool = False, pin_cores: bool = False) -> dict:
    """Train ``recipe`` once per seed into ``out`` (skipping finished trials) and write the summary.

    Returns the summary (what ``summary.json`` holds).
    """
    from cifarlab.experiments import execution
    from cifarlab.training.config import TrainConfig, resolve

    out = Path(out)
    train_fields = {"recipe": recipe, "model": model, "data": absolute(data), "dataset": dataset, "limit": limit,
                    "epochs": epochs, "coarse": coarse, "overrides": overrides or None}
    for seed in seeds[:1]:  # a typo in a name, a field or a value fails now, before any worker starts
        resolve(TrainConfig(**train_fields, seed=seed))
    spec = check_spec(out, {"train": train_fields, "seeds": seeds, "report": report})
    pool = execution.make_pool(workers, ray, out / "logs", cpus_per_trial, gpus_per_trial, pin_cores)
    if tracker is not None:
        tracker.check()
    write_json(out / SPEC, spec)
    todo = [s for s in seeds if not is_finished(trial_dir(out, s))]
    say = (lambda line: None) if quiet else (lambda line: print(line, flush=True))
    say(f"sweep {out}: {len(seeds) - len(todo)} of {len(seeds)} trials finished, {len(todo)} to run "
        f"({pool.describe()['executor']}, {pool.free()} at a time)")
    failures: dict[str, str] = {}
    jobs = [{"key": trial_dir(out, s).name, "config": {
        **train_fields, "seed": s, "deterministic": True, "out": str(trial_dir(out, s).resolve()), "quiet": True,
        "report": report}} for s in todo]

    def on_start(job, attempt):
        job["t0"] = time.perf_counter()
        if tracker is not None:
            tracker.start(job, spec)

    def on_epoch(job, row):
        if tracker is not None:
            tracker.epoch(job, row)
        return True

    def on_result(job, msg):
        if tracker is not None:
            tracker.finish(job, msg)
        if msg["event"] == "done":
            m = msg["metrics"]
            acc = m.get("tta_test_accuracy", m.get("test_accuracy"))
            say(f"  {job['key']}: test accuracy {acc:.4f} ({time.perf_counter() - job['t0']:.0f} s)")
        else:
            failures[job["key"]] = msg.get("message", msg["event"])
            say(f"  {job['key']}: {msg['event']}: {failures[job['key']]}")

    execution.drive(pool, execution.iterate(jobs), on_result, on_epoch=on_epoch, on_start=on_start,
                    retries=retries, say=lambda line: print(line, file=sys.stderr, flush=True))
    summary = write_summary(out)
    if failures:
        summary["failed"] = failures
    return summary


def load_trials(out: Path) -> list[dict]:
    """The finished trials of a sweep folder: ``{"name", "seed", "run_dir", "metrics", "history", "config"}``."""
    import pandas as pd

    spec = read_spec(out)
    trials = []
    for seed in spec.get("seeds", []):
        run_dir = trial_dir(out, seed)
        if not is_finished(run_dir):
            continue
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text())
            config = json.loads((run_dir / "config.json").read_text())
            history = pd.read_csv(run_dir / "history.csv")
        except (OSError, ValueError) as e:
            raise CifarlabError(f"{run_dir}: unreadable trial ({e})") from None
        trials.append({"name": run_dir.name, "seed": seed, "run_dir": run_dir, "metrics": metrics,
                       "history": history, "config": config})
    return trials


def read_spec(out: Path) -> dict:
    try:
        return json.loads((Path(out) / SPEC).read_text())
    except FileNotFoundError:
        raise CifarlabError(f"{out} is not a sweep folder (no {SPEC}); run `cifarlab sweep -o {out}` first") from None
    except (OSError, ValueError) as e:
        raise CifarlabError(f"{out}/{SPEC} is unreadable ({e})") from None


def headline_metric(metrics_keys, trials: list[dict] | None = None) -> str:
    """The accuracy a recipe is judged by: with test-time augmentation where the runs have it (and it is on)."""
    tta_off = bool(trials) and all(t["metrics"].get("tta") == "none" for t in trials)
    return "tta_test_accuracy" if "tta_test_accuracy" in metrics_keys and not tta_off else "test_accuracy"


def wall_seconds(config: dict) -> float | None:
    from datetime import datetime

    try:
        return (datetime.fromisoformat(config["finished"]) - datetime.fromisoformat(config["started"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return None


def summary_frame(trials: list[dict]):
    """One row per trial: seed and every scalar final metric (accuracies as fractions, seconds)."""
    import pandas as pd

    from cifarlab.experiments.trial import scalars

    rows = [{"trial": t["name"], "seed": t["seed"], **scalars(t["metrics"]), "wall_seconds": wall_seconds(t["config"])}
            for t in trials]
    return pd.DataFrame(rows)


def epoch_bands(trials: list[dict]) -> dict:
    """Per history column, per epoch: mean, std and n over the trials that reached that epoch."""
    import pandas as pd

    if not trials:
        return {}
    h = pd.concat([t["history"].assign(trial=t["name"]) for t in trials], ignore_index=True)
    cols = [c for c in h.columns if c not in ("epoch", "trial") and pd.api.types.is_numeric_dtype(h[c])]
    g = h.groupby("epoch")[cols]
    mean, std, n = g.mean(), g.std(ddof=1), g.count()
    return {c: {"epoch": [int(e) for e in mean.index], "mean": mean[c].tolist(),
                "std": [None if v != v else v for v in std[c].tolist()], "n": n[c].tolist()} for c in cols}


def write_summary(out: str | os.PathLike) -> dict:
    """``summary.csv``, ``summary.json`` and ``sweep.html`` from the finished trials of ``out``."""
    from cifarlab.experiments import stats

    out = Path(out)
    spec = read_spec(out)
    trials = load_trials(out)
    frame = summary_frame(trials)
    metrics = {c: stats.summarize(frame[c].dropna()) for c in frame.columns if c not in ("trial", "seed")}
    summary = {"sweep": str(out), "spec": spec, "trials": len(trials), "seeds": [t["seed"] for t in trials],
               "missing": [s for s in spec.get("seeds", []) if s not in {t["seed"] for t in trials}],
               "headline": headline_metric(metrics, trials), "metrics": metrics, "epochs": epoch_bands(trials),
               "environment": trials[0]["config"].get("environment") if trials else None}
    write_text(out / SUMMARY_CSV, frame.to_csv(index=False))
    write_json(out / SUMMARY_JSON, summary)
    from cifarlab.experiments.html import sweep_html

    write_text(out / HTML, sweep_html(summary, frame, trials))
    return summary


def format_summary(summary: dict) -> str:
    """A few lines for the terminal: the headline metric and time per trial."""
    lines = [f"{summary['sweep']}: {summary['trials']} finished trials"
             + (f", {len(summary['missing'])} missing (seeds {summary['missing']})" if summary["missing"] else "")]
    for name in (summary["headline"], "val_accuracy", "train_seconds"):
        s = summary["metrics"].get(name)
        if not s or s["mean"] is None:
            continue
        pct = name.endswith("accuracy")
        f = (lambda v: f"{100 * v:.2f} %") if pct else (lambda v: f"{v:.1f} s")
        spread = f" ± {(100 if pct else 1) * s['std']:.2f} (std), 95 % CI {f(s['ci_low'])} - {f(s['ci_high'])}" \
            if s["std"] is not None else ""
        lines.append(f"  {name}: {f(s['mean'])}{spread}")
    return "\n".join(lines)
