"""Does ``torch.compile`` speed up the portable loop's PyTorch training step on this CPU? (issue 15)

    KERAS_BACKEND=torch PYTHONPATH=src .venv/bin/python benchmarks/torch_compile.py [--limit 1024]
        [--batch 500] [--warmup 2] [--rounds 6] [--modes default] [--out /tmp/x.json]

One process, the ``quick`` recipe's model and :class:`PortableTrainer` on the first ``--limit``
training images of the shared archive, on the PyTorch backend, fp32 (what ``--precision auto``
picks for PyTorch on a CPU). The step (``PortableTrainer._train_step``: gather, forward, autograd,
Muon/SGD update, weight average, sums) runs in variants from the same starting state and the same
batches (first-epoch views: flip + 2-pixel translation of whole images):

- ``eager``: what ``backend/torch.py``'s ``compile_step`` does today (the step under ``no_grad``);
- ``compiled``: ``torch.compile`` of that step, default inductor mode (and, with ``--modes``,
  other modes such as ``max-autotune-no-cudagraphs``).

Each variant first runs ``--warmup`` steps (the compiled one's first call compiles: its seconds are
reported apart), then ``--rounds`` rounds each time one step of every variant, in an order that
rotates per round, so that a slow spell of the shared host hits all. The per-step median is the
figure; the losses of every step are compared with eager's (max abs difference over all steps).

Writes ``benchmarks/results/torch_compile.json`` and the ``torch_compile`` section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_ARCHIVE, machine, record  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED_ARCHIVE))
    ap.add_argument("--limit", type=int, default=1024, help="training images loaded")
    ap.add_argument("--batch", type=int, default=500, help="images per step (quick's batch: 500)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--modes", default="default", help="comma-separated torch.compile modes to time besides eager")
    ap.add_argument("--out", help="write the figures here only, not to results/ and RESULTS.md")
    args = ap.parse_args()

    import keras
    import numpy as np
    import torch
    from keras import ops

    from cifarlab.backend import use
    from cifarlab.data import load_dataset
    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision
    from cifarlab.training.portable import PortableTrainer, view_indices

    use("torch")
    d = load_dataset(args.data, validate_on="test", limit=args.limit, quiet=True)
    recipe = get_recipe("quick")
    precision.apply("fp32")
    keras.utils.set_random_seed(0)
    trainer = PortableTrainer(get_model(recipe.model).build(10), recipe, d.x_train, d.y_train, seed=0)
    trainer.batch_size = min(args.batch, len(d.y_train))
    trainer._build(100)  # optimizer, eager step, state from the variables
    state0 = trainer.state
    eager = trainer._step

    def compiled(mode):
        fn = torch.compile(trainer._train_step, mode=None if mode == "default" else mode)

        def step(*a, **k):
            with torch.no_grad():
                return fn(*a, **k)
        return step

    variants = {"eager": eager, **{f"compiled ({m})": compiled(m) for m in args.modes.split(",")}}
    rng = np.random.default_rng(0)
    n_steps = args.warmup + args.rounds
    batches = []
    for _ in range(n_steps):
        idx = rng.choice(len(d.y_train), trainer.batch_size, replace=False).astype(np.int32)
        flips = rng.integers(0, 2, len(idx)).astype(bool)
        dy, dx = rng.integers(-2, 3, (2, len(idx)))
        rows, cols = view_indices(trainer.size, flips, dy, dx)
        batches.append(tuple(ops.convert_to_tensor(a) for a in (idx, rows, cols)))

    states = {v: state0 for v in variants}
    losses = {v: [] for v in variants}
    times = {v: [] for v in variants}
    warm = {v: [] for v in variants}
    first = {}

    def run(v, i):
        prev = float(states[v][4][0])
        t0 = time.perf_counter()
        new = variants[v](states[v], trainer.frozen, trainer.x, trainer.y, *batches[i], whiten_bias_on=True)
        loss_sum = float(new[4][0])  # waits for the step (CPU: synchronous anyway)
        dt = time.perf_counter() - t0
        states[v] = new
        if i == 0:  # from the same start state: the differences of one step, before they compound
            first[v] = [np.asarray(ops.convert_to_numpy(t)) for t in new[0]]
        losses[v].append((loss_sum - prev) / trainer.batch_size)
        return dt

    for v in variants:
        for i in range(args.warmup):
            warm[v].append(round(run(v, i), 3))
            print(f"warm-up {v} step {i}: {warm[v][-1]} s", flush=True)
    names = list(variants)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for v in order:
            times[v].append(round(run(v, args.warmup + r), 4))
        print(f"round {r}: " + ", ".join(f"{v} {times[v][-1]:.3f} s" for v in names), flush=True)

    ref = losses["eager"]
    from torch._dynamo.utils import counters

    breaks = counters["graph_break"]
    summary = {}
    for v in names:
        med = statistics.median(times[v])
        summary[v] = {"median_step_ms": round(med * 1000, 1), "first_call_s": warm[v][0],
                      "step_s": times[v], "warmup_s": warm[v],
                      "speedup_vs_eager": round(statistics.median(times["eager"]) / med, 3),
                      "max_abs_loss_diff_vs_eager": float(max(abs(a - b) for a, b in zip(losses[v], ref))),
                      "losses": [round(x, 6) for x in losses[v]]}
    final = {v: [np.asarray(ops.convert_to_numpy(t)) for t in states[v][0]] for v in names}
    for v in names:
        summary[v]["first_step_max_abs_weight_diff_vs_eager"] = float(max(np.abs(a - b).max()
                                                                          for a, b in zip(first[v], first["eager"])))
        summary[v]["max_abs_weight_diff_vs_eager"] = float(max(np.abs(a - b).max()
                                                               for a, b in zip(final[v], final["eager"])))
    figures = {"recipe": "quick", "limit": args.limit, "batch": trainer.batch_size, "warmup": args.warmup,
               "rounds": args.rounds, "precision": "fp32", "torch": torch.__version__, "keras": keras.__version__,
               "torch_threads": torch.get_num_threads(), "load_average_at_end": os.getloadavg(),
               "dynamo_graph_breaks": sum(breaks.values()), "dynamo_graph_break_reasons": len(breaks),
               "dynamo_graph_break_examples": [r[:200] for r, _ in breaks.most_common(5)],
               "variants": summary}
    print(json.dumps({v: {k: s[k] for k in ("median_step_ms", "first_call_s", "speedup_vs_eager",
                                               "max_abs_loss_diff_vs_eager", "first_step_max_abs_weight_diff_vs_eager",
                                               "max_abs_weight_diff_vs_eager")}
                      for v, s in summary.items()}, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine(), **figures}, indent=2) + "\n")
        return 0
    rows = ["| variant | median step ms | steps (s) | first call s (compile + step) | vs eager | "
            "max abs loss diff (all steps) | max abs weight diff after step 1 / at the end |",
            "|---|---|---|---|---|---|---|"]
    for v, s in summary.items():
        rows.append(f"| {v} | {s['median_step_ms']:.0f} | {', '.join(f'{t:.2f}' for t in s['step_s'])} | "
                    f"{s['first_call_s']:.1f} | {s['speedup_vs_eager']:.2f}x | {s['max_abs_loss_diff_vs_eager']:.2e} | "
                    f"{s['first_step_max_abs_weight_diff_vs_eager']:.1e} / {s['max_abs_weight_diff_vs_eager']:.1e} |")
    note = (f"`KERAS_BACKEND=torch benchmarks/torch_compile.py --limit {args.limit} --batch {trainer.batch_size} "
            f"--warmup {args.warmup} --rounds {args.rounds} --modes {args.modes}`: the portable loop's `quick` step "
            f"(fp32, torch {torch.__version__}, {torch.get_num_threads()} threads) eager (`backend/torch.py` today) "
            f"against `torch.compile` of the same step, one process, same start state and batches, "
            f"{args.rounds} rounds in rotating order after {args.warmup} warm-up steps each; loss differences over "
            f"all {n_steps} steps. Dynamo: {sum(breaks.values())} graph breaks ({len(breaks)} reasons). Load average at the end {os.getloadavg()[0]:.1f} (a shared host).")
    record("torch_compile", figures, note + "\n\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
