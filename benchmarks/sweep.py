"""Sweeps: is one changed hyperparameter better or noise, and what do workers and Ray cost?

    PYTHONPATH=src python benchmarks/sweep.py [--limit 5000] [--epochs 4] [--seeds 0-4]

Runs ``cifarlab sweep`` four times on the same slice (quick recipe, ``--limit`` training
images, ``--epochs`` epochs, the full test set), each in its own folder:

- A1: quick, ``--workers 1``;  A2: quick, ``--workers 2`` (same seeds: the same numbers, in less time?)
- AR: quick, ``--ray local`` with 2 trials at a time (1 CPU each): Ray's overhead against A2
- B:  quick with ``--set label_smoothing=0.0`` (the recipe has 0.2), ``--workers 2``

then ``cifarlab compare A1 B``. Writes ``benchmarks/results/sweep.json`` and the
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


def sweep(out: Path, args, *extra) -> dict:
    cmd = [sys.executable, "-m", "cifarlab", "sweep", "--recipe", "quick", "--data", str(args.data),
           "--limit", str(args.limit), "--epochs", str(args.epochs), "--seeds", args.seeds, "--no-report",
           "-o", str(out), *extra]
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
    p.add_argument("--limit", type=int, default=5000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", default="0-4")
    args = p.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cifarlab-sweep-bench-") as tmp:
        tmp = Path(tmp)
        a1 = sweep(tmp / "A1", args, "--workers", "1")
        a2 = sweep(tmp / "A2", args, "--workers", "2")
        ar = sweep(tmp / "AR", args, "--ray", "local", "--workers", "2", "--cpus-per-trial", "1")
        b = sweep(tmp / "B", args, "--workers", "2", "--set", CHANGE)
        c = run_measured([sys.executable, "-m", "cifarlab", "compare", str(tmp / "A1"), str(tmp / "B"), "--json"])
        if c["returncode"] != 0:
            raise SystemExit(c["stderr"])
        cmp = json.loads(c["stdout"])
    load_after = os.getloadavg()
    figures = {
        "setup": {"recipe": "quick", "limit": args.limit, "epochs": args.epochs, "seeds": args.seeds,
                  "change": CHANGE, "test_images": 10000, "cores": os.cpu_count()},
        "load_average_before": load_before, "load_average_after": load_after,
        "A_workers_1": a1, "A_workers_2": a2, "A_ray_local_2": ar, "B_workers_2": b,
        "same_results_1_vs_2_workers": a1["values"] == a2["values"],
        "same_results_local_vs_ray": a1["values"] == ar["values"],
        "speedup_2_workers": round(a1["wall_seconds"] / a2["wall_seconds"], 3),
        "ray_overhead_vs_local_2": round(ar["wall_seconds"] / a2["wall_seconds"], 3),
        "compare_A_vs_B": {k: cmp[k] for k in ("sentence", "welch", "bootstrap", "hedges_g", "n_a", "n_b")},
    }
    pct = lambda s: f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"  # noqa: E731
    table = f"""
`PYTHONPATH=src python benchmarks/sweep.py --limit {args.limit} --epochs {args.epochs} --seeds {args.seeds}`:
quick recipe on the first {args.limit:,} training images (90 % trained, 10 % validation), {args.epochs} epochs,
full test set, seeds {args.seeds}. Load average before/after: {load_before[0]:.1f} / {load_after[0]:.1f}
(the machine's 2 cores are shared with other jobs: wall times are noisy, ratios less so).

| sweep | executor | wall s | trials | {a1['headline']} mean ± std (%) | training s per trial |
|---|---|---:|---:|---:|---:|
| A (quick) | local, 1 worker | {a1['wall_seconds']:.0f} | {a1['trials']} | {pct(a1)} | {a1['train_seconds_mean']:.1f} |
| A (quick) | local, 2 workers | {a2['wall_seconds']:.0f} | {a2['trials']} | {pct(a2)} | {a2['train_seconds_mean']:.1f} |
| A (quick) | Ray (local head, 2 x 1 CPU) | {ar['wall_seconds']:.0f} | {ar['trials']} | {pct(ar)} | {ar['train_seconds_mean']:.1f} |
| B (quick, {CHANGE}) | local, 2 workers | {b['wall_seconds']:.0f} | {b['trials']} | {pct(b)} | {b['train_seconds_mean']:.1f} |

- 2 workers against 1: {figures['speedup_2_workers']:.2f}x the speed; identical accuracies: {figures['same_results_1_vs_2_workers']}.
- Ray against 2 local workers: {figures['ray_overhead_vs_local_2']:.2f}x the wall time (Ray's start-up included);
  identical accuracies: {figures['same_results_local_vs_ray']}.
- `cifarlab compare A B`: {cmp['sentence']}; bootstrap 95 % CI {100 * cmp['bootstrap']['ci_low']:+.2f} …
  {100 * cmp['bootstrap']['ci_high']:+.2f} points, Hedges' g {cmp['hedges_g'] if cmp['hedges_g'] is None else round(cmp['hedges_g'], 2)}.
"""
    print(record("sweep", figures, table))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
