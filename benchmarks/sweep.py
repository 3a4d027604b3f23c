"""Sweeps: is one changed hyperparameter better or noise, and what do workers and Ray cost?

    PYTHONPATH=src python benchmarks/sweep.py [--limit 5000] [--epochs 4] [--seeds 0-4]

Runs ``cifarlab sweep`` on the same slice (quick recipe without test-time augmentation,
``--limit`` training images, ``--epochs`` epochs, the full test set), each in its own folder:

- timing, on ``--timing-seeds`` (default 0-3): A1 ``--workers 1``, A2 ``--workers 2``, and AR
  ``--ray local`` with 2 trials at a time (1 CPU each): Ray's overhead against A2
- the comparison, on ``--seeds`` (default 0-4): A2 extended to those seeds (a rerun trains only
  the new ones), and B, quick with ``--set label_smoothing=0.0`` (the recipe has 0.2), 2 workers;
  then ``cifarlab compare A B``. Writes ``benchmarks/results/sweep.json`` and the
``## sweep`` section of RESULTS.md. The machine's load average at the start and the end
is recorded: timings on a shared machine are noisy, their ratios less so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_ARCHIVE, record, run_measured  # noqa: E402

CHANGE = "label_smoothing=0.0"


BASE = "tta=none"  # the test set's 6 augmented passes would cost more than the training on this slice


def sweep(out: Path, args, seeds: str, *extra) -> dict:
    cmd = [sys.executable, "-m", "cifarlab", "sweep", "--recipe", "quick", "--data", str(args.data),
           "--limit", str(args.limit), "--epochs", str(args.epochs), "--seeds", seeds, "--no-report",
           "--set", BASE, "-o", str(out), *extra]
    r = run_measured(cmd, timeout=3600)
    if r["returncode"] != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r['stderr'][-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    acc = summary["metrics"][summary["headline"]]
    return {"wall_seconds": r["wall_seconds"], "trials": summary["trials"], "headline": summary["headline"],
            "mean": acc["mean"], "std": acc["std"], "ci95": [acc["ci_low"], acc["ci_high"]],
            "train_seconds_mean": summary["metrics"]["train_seconds"]["mean"],
            "values": [json.loads((out / f"seed-{s}" / "metrics.json").read_text())[summary["headline"]]
                       for s in summary["seeds"]]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(SHARED_ARCHIVE))
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", default="0-4")
    p.add_argument("--timing-seeds", default="0-3")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cifarlab-sweep-bench-") as tmp:
        tmp = Path(tmp)
        a1 = sweep(tmp / "A1", args, args.timing_seeds, "--workers", "1")
        a2 = sweep(tmp / "A", args, args.timing_seeds, "--workers", "2")
        ar = sweep(tmp / "AR", args, args.timing_seeds, "--ray", "local", "--workers", "2", "--cpus-per-trial", "1")
        a = sweep(tmp / "A", args, args.seeds, "--workers", "2")
        b = sweep(tmp / "B", args, args.seeds, "--workers", "2", "--set", CHANGE)
        c = run_measured([sys.executable, "-m", "cifarlab", "compare", str(tmp / "A"), str(tmp / "B"), "--json"])
        if c["returncode"] != 0:
            raise SystemExit(c["stderr"])
        cmp = json.loads(c["stdout"])
    load_after = os.getloadavg()
    figures = {
        "setup": {"recipe": "quick", "base": BASE, "limit": args.limit, "epochs": args.epochs, "seeds": args.seeds,
                  "timing_seeds": args.timing_seeds, "change": CHANGE, "test_images": 10000,
                  "cores": os.cpu_count()},
        "load_average_before": load_before, "load_average_after": load_after,
        "timing_workers_1": a1, "timing_workers_2": a2, "timing_ray_local_2": ar, "A": a, "B": b,
        "same_results_1_vs_2_workers": a1["values"] == a2["values"],
        "same_results_local_2_vs_ray": a2["values"] == ar["values"],
        "speedup_2_workers": round(a1["wall_seconds"] / a2["wall_seconds"], 3),
        "ray_overhead_vs_local_2": round(ar["wall_seconds"] / a2["wall_seconds"], 3),
        "compare_A_vs_B": {k: cmp[k] for k in ("sentence", "welch", "bootstrap", "hedges_g", "n_a", "n_b")},
    }
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"  # noqa: E731
    table = f"""
`PYTHONPATH=src python benchmarks/sweep.py --limit {args.limit} --epochs {args.epochs} --seeds {args.seeds} --timing-seeds {args.timing_seeds}`:
quick recipe with `--set {BASE}` on the first {args.limit:,} training images (90 % trained, 10 % validation),
{args.epochs} epochs, the full test set. Load average (1 min) before/after: {load_before[0]:.1f} / {load_after[0]:.1f}
on 2 cores shared with other jobs: wall times are noisy, ratios less so.

| sweep | executor | seeds | wall s | {a1['headline']} mean ± std (%) | training s per trial |
|---|---|---|---:|---:|---:|
| A (quick) | local, 1 worker (2 threads) | {args.timing_seeds} | {a1['wall_seconds']:.0f} | {pct(a1)} | {a1['train_seconds_mean']:.1f} |
| A (quick) | local, 2 workers (1 thread each) | {args.timing_seeds} | {a2['wall_seconds']:.0f} | {pct(a2)} | {a2['train_seconds_mean']:.1f} |
| A (quick) | Ray (`--ray local`, 2 x 1 CPU) | {args.timing_seeds} | {ar['wall_seconds']:.0f} | {pct(ar)} | {ar['train_seconds_mean']:.1f} |
| A (quick) | local, 2 workers (resumed: new seeds only) | {args.seeds} | {a['wall_seconds']:.0f} | {pct(a)} | {a['train_seconds_mean']:.1f} |
| B (quick, {CHANGE}) | local, 2 workers | {args.seeds} | {b['wall_seconds']:.0f} | {pct(b)} | {b['train_seconds_mean']:.1f} |

- 2 workers against 1: {figures['speedup_2_workers']:.2f}x the speed; identical accuracies: {figures['same_results_1_vs_2_workers']}.
- Ray against 2 local workers: {figures['ray_overhead_vs_local_2']:.2f}x the wall time (Ray's start-up included);
  identical accuracies: {figures['same_results_local_2_vs_ray']}.
- `cifarlab compare A B`: {cmp['sentence']}; bootstrap 95 % CI {100 * cmp['bootstrap']['ci_low']:+.2f} …
  {100 * cmp['bootstrap']['ci_high']:+.2f} points, Hedges' g {cmp['hedges_g'] if cmp['hedges_g'] is None else round(cmp['hedges_g'], 2)}.
"""
    print(record("sweep", figures, table))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
