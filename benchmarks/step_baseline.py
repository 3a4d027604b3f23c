"""The TensorFlow fast loop's step time, this tree against a baseline commit, in one run.

    .venv/bin/python benchmarks/step_baseline.py [--baseline 86bec18] [--recipe fast] [--pairs 3] [--steps 6]

For a check that a change to the training code did not slow the TensorFlow path when a whole
run per seed does not fit (a ``fast`` run is 7 minutes on a bf16 CPU, about 40 on an AVX2-only
one). The baseline is a git worktree of ``--baseline`` in a temporary folder; each tree runs in
its own child process (``PYTHONPATH`` = its ``src``), alternately and in alternating order, so that
a slow spell of the host hits both. A child builds the recipe's model and ``FastTrainer`` on the
first ``--limit`` training images, runs ``--warmup`` steps (tracing, kernel autotuning), then
times ``--steps`` steps queued back to back as ``fit`` queues them (whole 32x32 images, first-epoch
step: the costliest kind). It also trains ``quick`` for one short epoch from seed 0 and reports
its loss, so that the two trees' numerics are compared too.

Writes ``benchmarks/results/step_baseline.json`` and the ``step_baseline`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_ARCHIVE, record, worktree  # noqa: E402

CHILD = r'''
import json, sys, time
import numpy as np
import keras
import tensorflow as tf
from cifarlab.data import load_dataset
from cifarlab.registry import get_model, get_recipe
from cifarlab.training import precision
from cifarlab.training.fast import FastTrainer

data, recipe_name, limit, warmup, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
d = load_dataset(data, validate_on="test", limit=limit, quiet=True)
out = {"cifarlab": __import__("cifarlab").__file__}
recipe = get_recipe(recipe_name)
prec = precision.resolve(recipe.precision)
precision.apply(prec)
keras.utils.set_random_seed(0)
trainer = FastTrainer(get_model(recipe.model).build(10), recipe, d.x_train, d.y_train, seed=0)
b = recipe.batch_size
order = np.random.default_rng(0).permutation(len(d.y_train))
batches = [tf.constant(np.resize(order, (warmup + steps) * b)[i * b:(i + 1) * b], tf.int32) for i in range(warmup + steps)]
t0 = time.perf_counter()
for idx in batches[:warmup]:
    trainer.timed_step(idx)
out["warmup_seconds"] = round(time.perf_counter() - t0, 2)
t0 = time.perf_counter()
for idx in batches[warmup:]:
    trainer.timed_step(idx, wait=False)
trainer.seen.numpy()
out["step_seconds"] = round((time.perf_counter() - t0) / steps, 4)
out["precision"] = prec
# numerics: quick, one epoch of the first 2,000 images, seed 0
q = get_recipe("quick")
precision.apply(precision.resolve(q.precision))
keras.utils.set_random_seed(0)
qt = FastTrainer(get_model(q.model).build(10), q, d.x_train[:2000], d.y_train[:2000], seed=0)
res = qt.fit(1)
out["quick_loss"] = res.history[-1]["loss"]
out["quick_test_probs_sum"] = float(np.asarray(qt.predict(d.x_test[:500]), np.float64).sum())
print("RESULT=" + json.dumps(out))
'''


def child(tree: Path, args) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "TF_CPP_MIN_LOG_LEVEL": "2"}
    p = subprocess.run([sys.executable, "-c", CHILD, str(args.data), args.recipe, str(args.limit), str(args.warmup),
                        str(args.steps)], capture_output=True, text=True, env=env, cwd=tree)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT=")), None)
    if p.returncode or line is None:
        raise SystemExit(f"step_baseline: the child in {tree} failed: {(p.stderr.strip().splitlines() or ['?'])[-1]}")
    return json.loads(line[len("RESULT="):])


def write_record(figures: dict) -> None:
    """``results/step_baseline.json`` and the RESULTS.md section, from a run's figures."""
    runs, summary, base = figures["runs"], figures["summary"], figures["baseline"]
    med = summary["median_step_seconds"]
    rows = ["| tree | step seconds (each child) | median | warm-up seconds (each) |", "|---|---|---|---|"]
    for n in med:
        mine = [r for r in runs if r["tree"] == n]
        rows.append(f"| {n} | {', '.join(str(r['step_seconds']) for r in mine)} | {med[n]:.3f} | "
                    f"{', '.join(str(r['warmup_seconds']) for r in mine)} |")
    same = summary["quick_numerics_identical"]
    note = (f"`benchmarks/step_baseline.py --baseline {base} --pairs {figures['pairs']} --steps {figures['steps']}`: "
            f"`{figures['recipe']}`, {figures['steps']} steps queued as `fit` queues them after {figures['warmup']} "
            f"warm-up steps, {figures['pairs']} children per tree in alternating order, precision "
            f"`{summary['precision']}` (what `auto` picks on this CPU). Step time this tree / {base}: "
            f"**{summary['ratio_this_over_baseline']:.3f}**. quick, 1 epoch on 2,000 images, seed 0: loss and test "
            f"probabilities {'identical' if same else 'not bit-identical'} between the trees.")
    record("step_baseline", figures, note + "\n\n" + "\n".join(rows) + "\n\n" + figures.get("comment", ""))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="86bec18", help="git commit to compare with (default: main when issue 15 "
                                                          "was filed)")
    ap.add_argument("--data", default=str(SHARED_ARCHIVE))
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--limit", type=int, default=20000, help="training images loaded (the step cost does not "
                                                             "depend on it)")
    ap.add_argument("--out", help="write the figures here only, not to results/ and RESULTS.md")
    ap.add_argument("--record", metavar="JSON", help="only write results/ and RESULTS.md from an --out file")
    args = ap.parse_args()
    if args.record:
        write_record(json.loads(Path(args.record).read_text()))
        return 0
    trees = {"this tree": ROOT, args.baseline: worktree(args.baseline, "step-baseline-")}
    runs = []
    for i in range(args.pairs):
        for name in (list(trees) if i % 2 == 0 else list(trees)[::-1]):
            r = child(trees[name], args)
            r["tree"] = name
            runs.append(r)
            print(json.dumps(r), flush=True)
    med = {n: statistics.median(r["step_seconds"] for r in runs if r["tree"] == n) for n in trees}
    same = len({(r["quick_loss"], r["quick_test_probs_sum"]) for r in runs}) == 1
    ratio = med["this tree"] / med[args.baseline]
    summary = {"median_step_seconds": med, "ratio_this_over_baseline": round(ratio, 4),
               "quick_numerics_identical": same, "precision": runs[0]["precision"]}
    print(json.dumps(summary, indent=1))
    figures = {"baseline": args.baseline, "recipe": args.recipe, "steps": args.steps, "warmup": args.warmup,
               "pairs": args.pairs, "runs": runs, "summary": summary}
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2) + "\n")
    else:
        write_record(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
