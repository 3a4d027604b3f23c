"""The ``quick`` recipe on each Keras backend in one run: TensorFlow (its fast loop), JAX and PyTorch
(the portable loop), each a ``cifarlab --backend B train`` of its own, on the same data and seed.

    PYTHONPATH=src .venv/bin/python benchmarks/backends.py                 # full data: 45k train / 5k hold-out
    PYTHONPATH=src .venv/bin/python benchmarks/backends.py --limit 2000 --epochs 1 --out /tmp/x.json  # smoke

Figures per backend: TTA and plain test accuracy, training seconds (compilation included, as
``metrics.json`` counts them), training images/s, wall seconds of the whole command, and the
precision ``--precision auto`` chose. ``--parallel`` runs the backends at the same time (on a
shared machine, to finish sooner; each then runs slower, and the note says so).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED_ARCHIVE, machine, record, run_measured  # noqa: E402

BACKENDS = ("tensorflow", "jax", "torch")


def command(backend: str, out: Path, args) -> list[str]:
    cmd = [sys.executable, "-m", "cifarlab", "--backend", backend, "train", "--recipe", args.recipe,
           "--data", str(args.data), "--seed", str(args.seed), "--out", str(out), "--quiet", "--no-report"]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    return cmd


PROBE = '''
import json, sys, time
import numpy as np
from cifarlab.registry import get_model, get_recipe
from cifarlab.training import precision
from cifarlab.training.portable import PortableTrainer
rng = np.random.default_rng(0)
x, y = rng.integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 2000)
out = {}
for prec in ("fp32", "bf16"):
    precision.apply(prec)
    seconds = []
    for epochs in (1, 2):  # each fit compiles its step once: the difference is one epoch of steps
        trainer = PortableTrainer(get_model("quick").build(num_classes=10), get_recipe("quick"), x, y)
        t0 = time.perf_counter()
        trainer.fit(epochs)
        seconds.append(time.perf_counter() - t0)
    out[prec] = round((seconds[1] - seconds[0]) / trainer.steps_per_epoch, 3)
print("RESULT=" + json.dumps(out))
'''


def precision_probe(backends: list[str]) -> dict:
    """Seconds per training step of quick (batch 500) in fp32 and bf16 on each backend's portable loop."""
    result = {}
    for b in backends:
        proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                              env={**__import__("os").environ, "KERAS_BACKEND": b})
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT=")]
        result[b] = json.loads(line[0][7:]) if line else {"error": proc.stderr.strip().splitlines()[-1:]}
    return result


def figures(run: dict, out: Path) -> dict:
    if run["returncode"] != 0:
        return {"error": (run["stderr"].strip().splitlines() or ["?"])[-1], "wall_seconds": run["wall_seconds"]}
    m = json.loads((out / "metrics.json").read_text())
    return {"tta_test_accuracy": m["tta_test_accuracy"], "test_accuracy": m["test_accuracy"],
            "train_seconds": m["train_seconds"], "train_images_per_second": m["train_images_per_second"],
            "epochs": m["epochs"], "precision": m["precision"], "wall_seconds": run["wall_seconds"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=SHARED_ARCHIVE)
    ap.add_argument("--recipe", default="quick")
    ap.add_argument("--backends", default=",".join(BACKENDS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--parallel", action="store_true", help="all backends at once (each slower)")
    ap.add_argument("--out", help="write the figures here only, not to results/ and RESULTS.md")
    ap.add_argument("--runs-dir", help="keep the run directories here (default: a temporary folder), so that a "
                                       "stopped run's history can still be read and a rerun resumes it")
    ap.add_argument("--precision-probe", action="store_true",
                    help="instead: seconds per step of quick in fp32 and bf16 on each backend (the portable loop), "
                         "which training.precision.CPU_BF16_PAYS records")
    args = ap.parse_args()
    backends = args.backends.split(",")
    if args.precision_probe:
        probe = {"machine": machine(), "seconds_per_step": precision_probe(backends)}
        rows = ["| backend | fp32 s/step | bf16 s/step |", "|---|---|---|"]
        rows += [f"| {b} | {p.get('fp32', '-')} | {p.get('bf16', '-')} |" for b, p in probe["seconds_per_step"].items()]
        record("backends_precision", probe, "`benchmarks/backends.py --precision-probe`: quick, batch 500, the "
               "portable loop, one epoch of 4 steps timed after compilation; a machine shared with other jobs.\n\n"
               + "\n".join(rows))
        print(json.dumps(probe, indent=2))
        return 0
    with tempfile.TemporaryDirectory(prefix="cifarlab-backends-") as tmp:
        outs = {b: Path(args.runs_dir or tmp) / b for b in backends}
        if args.parallel:
            procs = {b: subprocess.Popen(command(b, outs[b], args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         text=True) for b in backends}
            runs = {}
            for b, p in procs.items():
                out, err = p.communicate()
                runs[b] = {"returncode": p.returncode, "stdout": out, "stderr": err, "wall_seconds": None}
        else:
            runs = {b: run_measured(command(b, outs[b], args)) for b in backends}
        result = {b: figures(runs[b], outs[b]) for b in backends}
    meta = {"recipe": args.recipe, "seed": args.seed, "limit": args.limit, "epochs": args.epochs,
            "parallel": args.parallel, "machine": machine()}
    if args.out:
        Path(args.out).write_text(json.dumps({**meta, "backends": result}, indent=2) + "\n")
    else:
        rows = ["| backend | TTA test acc. | plain | training s | images/s | precision | command wall s |",
                "|---|---|---|---|---|---|---|"]
        for b, f in result.items():
            if "error" in f:
                rows.append(f"| {b} | failed: {f['error']} | | | | | |")
                continue
            rows.append(f"| {b} | {f['tta_test_accuracy']:.2%} | {f['test_accuracy']:.2%} | {f['train_seconds']:.0f} | "
                        f"{f['train_images_per_second']:.0f} | {f['precision']} | {f['wall_seconds'] or '-'} |")
        note = (f"`benchmarks/backends.py{' --parallel' if args.parallel else ''}`: `{args.recipe}`, seed "
                f"{args.seed}, {'all data (45k train / 5k hold-out)' if not args.limit else f'--limit {args.limit}'}; "
                "TensorFlow trains by its fast loop, JAX and PyTorch by the portable one. "
                + ("The backends ran at the same time, " if args.parallel else "")
                + "on a machine shared with other jobs: times are noisy, compare within the table.")
        record("backends", {**meta, "backends": result}, note + "\n\n" + "\n".join(rows))
    print(json.dumps(result, indent=2))
    return 0 if all("error" not in f for f in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
