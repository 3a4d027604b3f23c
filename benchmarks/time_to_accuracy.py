"""Time to accuracy: seed vs quick vs fast vs the published peer on the full CIFAR-10 copy, in one run.

    .venv/bin/python benchmarks/time_to_accuracy.py [--data ARCHIVE] [--seeds 3] [--only fast,quick,...]

Every measurement runs in its own subprocess (so its peak memory is its own) and
takes ``/tmp/cifarlab-cpu.lock`` while it runs, so heavy runs of the engineers
sharing this machine do not overlap; light work of others (tests, editors) still
does, and the load average at the start and end of each sub-run is recorded.

- ``peak``: bf16 and fp32 TFLOP/s of a matmul (2048^3) and of a fast-net convolution (forward and
  backward-weights), the ceilings for throughput, and the oneDNN kernels they ran on (AMX or not).
- ``seed``: the seed recipe (fp32, batch 32, adam) until 65 % test accuracy, checked
  every 250 steps and each epoch.
- ``quick``, ``fast`` x seeds: the recipes as registered, training on all 50,000
  images; test accuracy every few steps until 65 %, then each epoch; final plain and
  TTA test accuracy. "seconds" = training + final TTA evaluation (the clock stops
  while the progress evaluations run).
- ``peer``: airbench94_muon (the published record script) through the shipped CPU port, run
  by ``benchmarks/peer.py`` on the same archive: its TTA accuracy and seconds of training + TTA,
  timed as it times itself; the summary gives fast's and quick's seconds as ratios of it.
- ``pipeline``: fast step time with the real input pipeline (gather + flip +
  translate of uint8) against the same step on one fixed, unaugmented batch.
- ``--baseline REF``: each ``fast`` seed is also trained by the code at git commit REF (a
  worktree in a temporary folder, its own copy of this script), right before the same seed
  here, so that the two trainers' times are compared in the same run; the summary gives
  the ratio of the mean training seconds (this tree / REF).

Writes ``benchmarks/results/time_to_accuracy.json`` (or ``--out``) after every sub-run and,
for a full run to the default file, the table in ``benchmarks/RESULTS.md`` at the end.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import platform
import resource
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from cifarlab.fileio import write_text  # atomic

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg-binary.tar.gz"
RESULTS = ROOT / "benchmarks" / "results" / "time_to_accuracy.json"
LOCK = "/tmp/cifarlab-cpu.lock"
TARGET = 0.65


def _load(data, limit=None):
    from cifarlab.data import load_dataset

    return load_dataset(data, validate_on="test", limit=limit, quiet=True)


def _finish(out: dict) -> dict:
    out["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)
    out["cpu_seconds"] = round(time.process_time(), 1)
    return out


def _rate(fn, x, flops: float, reps: int) -> float:
    fn(x).numpy()  # compile and warm up
    t0 = time.perf_counter()
    for _ in range(reps):
        r = fn(x)
    r.numpy()
    return round(flops * reps / (time.perf_counter() - t0) / 1e12, 3)


def run_peak(args) -> dict:
    """bf16 and fp32 TFLOP/s of a 2048^3 matmul and of a fast-net 3x3 convolution (batch 500, 15x15,
    64 -> 256 channels: forward, and backward-weights as its own op), and which oneDNN kernels ran
    (``ONEDNN_VERBOSE``: an ``amx`` ISA where the CPU has AMX and oneDNN uses it)."""
    import tensorflow as tf

    out = {}
    n, (b, h, c_in, c_out) = 2048, (500, 15, 64, 256)
    conv_flops = 2 * b * h * h * c_in * c_out * 9
    for dtype in ("bfloat16", "float32"):
        reps = 10 if dtype == "bfloat16" else 5
        a = tf.cast(tf.random.normal([n, n]), dtype)
        out[f"{dtype}_matmul_tflops"] = _rate(tf.function(lambda x: tf.matmul(x, x)), a, 2 * n**3, reps)
        x = tf.cast(tf.random.normal([b, h, h, c_in]), dtype)
        k = tf.cast(tf.random.normal([3, 3, c_in, c_out]), dtype)
        dy = tf.cast(tf.random.normal([b, h, h, c_out]), dtype)
        out[f"{dtype}_conv_fwd_tflops"] = _rate(tf.function(lambda x: tf.nn.conv2d(x, k, 1, "SAME")), x, conv_flops,
                                                reps)
        out[f"{dtype}_conv_bwd_weights_tflops"] = _rate(tf.function(lambda x: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[3, 3, c_in, c_out], out_backprop=dy, strides=[1, 1, 1, 1], padding="SAME")),
            x, conv_flops, reps)
    out["onednn_kernels"] = _onednn_kernels()
    return out


def _onednn_kernels() -> list[str]:
    """The oneDNN implementations a bf16 matmul and conv run on here, e.g. ``brg_conv_fwd:avx512_core_amx``."""
    probe = ("import tensorflow as tf\n"
             "x = tf.cast(tf.random.normal([64, 15, 15, 64]), tf.bfloat16)\n"
             "k = tf.cast(tf.random.normal([3, 3, 64, 64]), tf.bfloat16)\n"
             "tf.nn.conv2d(x, k, 1, 'SAME').numpy()\n"
             "m = tf.cast(tf.random.normal([256, 256]), tf.bfloat16)\n"
             "tf.matmul(m, m).numpy()\n")
    p = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       env={**os.environ, "ONEDNN_VERBOSE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"})
    seen = set()
    for line in p.stdout.splitlines():
        parts = line.split(",")
        # onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_amx,forward_training,...
        if len(parts) > 6 and parts[0] == "onednn_verbose" and "exec" in parts:
            seen.add(f"{parts[parts.index('exec') + 2]}: {parts[parts.index('exec') + 3]}")
    return sorted(seen)


def run_seed(args) -> dict:
    import keras
    import numpy as np

    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision

    d = _load(args.data, args.limit)
    recipe = get_recipe("seed")
    precision.apply("fp32")
    keras.utils.set_random_seed(0)
    model = get_model("seed").build(num_classes=10)
    model.compile(optimizer=keras.optimizers.Adam(recipe.learning_rate), loss="sparse_categorical_crossentropy")
    evals = []

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.clock, self.t0, self.step = 0.0, time.perf_counter(), 0

        def _eval(self, epoch):
            self.clock += time.perf_counter() - self.t0
            acc = float((model.predict(d.x_test, batch_size=1000, verbose=0).argmax(1) == d.y_test).mean())
            evals.append({"step": self.step, "epoch": round(epoch, 3), "train_seconds": round(self.clock, 2),
                          "accuracy": acc})
            if acc >= TARGET:
                self.model.stop_training = True
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % 250 == 0:
                self._eval(self.step / self.params["steps"])

        def on_epoch_end(self, epoch, logs=None):
            if not evals or evals[-1]["step"] != self.step:
                self._eval(epoch + 1)

    x = d.x_train.astype(np.float32)
    model.fit(x, d.y_train, batch_size=recipe.batch_size, epochs=recipe.epochs, callbacks=[Probe()], verbose=0)
    hit = next((e for e in evals if e["accuracy"] >= TARGET), None)
    return {"recipe": "seed", "precision": "fp32", "evals": evals,
            "seconds_to_65": hit["train_seconds"] if hit else None,
            "images_per_second": round(evals[-1]["step"] * recipe.batch_size / evals[-1]["train_seconds"], 1)}


def run_recipe(args) -> dict:
    import keras

    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision
    from cifarlab.training.fast import FastTrainer
    from cifarlab.training.loop import ProgressEvals

    t_start = time.perf_counter()
    d = _load(args.data, args.limit)
    recipe = get_recipe(args.recipe)
    if args.epochs:
        recipe = recipe.with_overrides(epochs=args.epochs)
    prec = precision.resolve(recipe.precision)
    precision.apply(prec)
    keras.utils.set_random_seed(args.seed)
    model = get_model(recipe.model).build(num_classes=10)
    trainer = FastTrainer(model, recipe, d.x_train, d.y_train, seed=args.seed)
    probe = ProgressEvals(d.x_test, d.y_test, every=args.progress, until=TARGET) if args.progress else None
    res = trainer.fit(recipe.epochs, d.x_test, d.y_test, probe=probe)
    t0 = time.perf_counter()
    plain = float((trainer.predict(d.x_test).argmax(1) == d.y_test).mean())
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tta = float((trainer.predict_tta(d.x_test).argmax(1) == d.y_test).mean())
    tta_s = time.perf_counter() - t0
    evals = [asdict(e) for e in res.evals] or [
        {"step": (i + 1) * trainer.steps_per_epoch, "epoch": i + 1,
         "train_seconds": round(sum(h["train_seconds"] for h in res.history[: i + 1]), 2),
         "accuracy": h["val_accuracy"]} for i, h in enumerate(res.history)]
    hit = next((e for e in evals if e["accuracy"] >= TARGET), None)
    ips = res.images / res.train_seconds
    flops = trainer.train_flops(res.steps) / res.images  # per image, windows of progressive resizing included
    return {"recipe": recipe.name, "seed": args.seed, "precision": prec, "epochs": recipe.epochs,
            "batch_size": recipe.batch_size, "tta_test_accuracy": tta, "test_accuracy": plain,
            "train_seconds": round(res.train_seconds, 1), "eval_seconds": round(plain_s, 1),
            "tta_seconds": round(tta_s, 1), "seconds": round(res.train_seconds + tta_s, 1),
            "wall_seconds": round(time.perf_counter() - t_start, 1),
            "images_per_second": round(ips, 1), "train_gflop_per_image": round(flops / 1e9, 3),
            "tflops": round(flops * ips / 1e12, 3), "seconds_to_65": hit["train_seconds"] if hit else None,
            "history": res.history, "evals": evals}


def run_pipeline(args) -> dict:
    import keras
    import numpy as np
    import tensorflow as tf

    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision
    from cifarlab.training.fast import FastTrainer

    d = _load(args.data, 20000)
    out = {}
    precision.apply(precision.resolve("auto"))
    for label, changes in (("with_data", {}), ("fixed_batch", {"translate": 0, "flip": "none"})):
        recipe = get_recipe("fast").with_overrides(**changes)
        keras.utils.set_random_seed(0)
        trainer = FastTrainer(get_model("fast").build(10), recipe, d.x_train, d.y_train)
        b = recipe.batch_size
        order = np.random.default_rng(0).permutation(len(d.y_train))
        fixed = tf.constant(np.arange(b), tf.int32)
        times = []
        for s in range(8):
            idx = fixed if label == "fixed_batch" else tf.constant(order[s * b:(s + 1) * b], tf.int32)
            t0 = time.perf_counter()
            trainer.timed_step(idx)
            times.append(time.perf_counter() - t0)
        out[f"{label}_step_seconds"] = round(float(np.median(times[2:])), 3)
    out["ratio"] = round(out["with_data_step_seconds"] / out["fixed_batch_step_seconds"], 3)
    return out


def run_peer_kind(args) -> dict:
    from peer import run_peer

    return run_peer(args.data, runs=1, threads=os.cpu_count() or 2, limit=args.limit)


def child(args) -> None:
    fn = {"peak": run_peak, "seed": run_seed, "pipeline": run_pipeline, "peer": run_peer_kind}.get(args.one, run_recipe)
    if args.one not in ("peak", "seed", "pipeline", "peer"):
        args.recipe = args.one
    out = fn(args)
    print("RESULT " + json.dumps(_finish(out)), flush=True)


def _sub(kind: str, args, extra=(), script: Path | None = None) -> dict:
    """Run one measurement in a child process (``script``: another tree's copy of this file)."""
    cmd = [sys.executable, str(script or __file__), "--one", kind, "--data", str(args.data), *extra]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    if args.epochs:
        cmd += ["--epochs", str(args.epochs)]
    with open(LOCK, "a") as lock:
        t_wait = time.perf_counter()
        if not args.no_lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        waited = time.perf_counter() - t_wait
        load0 = os.getloadavg()
        print(f"[{datetime.now():%H:%M:%S}] {kind} {' '.join(extra)}{' at ' + args.baseline if script else ''} (waited {waited:.0f} s for the lock, "
              f"load {load0[0]:.1f})", flush=True)
        # PYTHONPATH, not the script's own sys.path.insert: the venv's editable install would win over that
        # and give a baseline's script this tree's package.
        src = Path(script or __file__).resolve().parents[1] / "src"
        p = subprocess.run(cmd, capture_output=True, text=True,
                           env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(src)})
        load1 = os.getloadavg()
    line = next((l for l in p.stdout.splitlines() if l.startswith("RESULT ")), None)
    if p.returncode or line is None:
        err = (p.stderr.strip().splitlines() or ["?"])[-1]
        print(f"  failed: {err}", flush=True)
        return {"kind": kind, "error": err}
    out = json.loads(line[len("RESULT "):])
    if script:
        out["baseline"] = args.baseline
    out.update(kind=kind, load_average_start=round(load0[0], 2), load_average_end=round(load1[0], 2),
               lock_wait_seconds=round(waited, 1))
    print("  " + json.dumps({k: v for k, v in out.items() if k not in ("history", "evals")}), flush=True)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0,
                    help="train fast seeds FIRST..FIRST+SEEDS-1 (to finish a cut-off run)")
    ap.add_argument("--only", default="peak,pipeline,peer,seed,quick,fast")
    ap.add_argument("--limit", type=int, help="train on fewer images (smoke test only)")
    ap.add_argument("--epochs", type=float, help="override epochs (smoke test only)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--no-lock", action="store_true", help="do not take the CPU lock (smoke tests on a slice)")
    ap.add_argument("--baseline", metavar="REF", help="also train each fast seed with the code at this git commit")
    ap.add_argument("--markdown", action="store_true", help="only rewrite the RESULTS.md table from --out's figures")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--progress", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    if args.one:
        return child(args)
    if args.markdown:
        results = json.loads(Path(args.out).read_text())
        results["summary"] = summarise(results["runs"])
        return write_markdown(results)

    import tensorflow as tf

    results = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                           "cpu": _cpu_name(), "gpus": [g.name for g in tf.config.list_physical_devices("GPU")],
                           "tensorflow": tf.__version__},
               "note": ("2 CPU cores; " + ("no lock taken: nothing else should run meanwhile" if args.no_lock else
                                          "heavy runs of others serialised by a lock, light ones (tests) not")
                        + "; a load average of about 2 is the run itself (see load_average_* per run)"),
               "runs": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        write_text(out, json.dumps(results, indent=1))

    only = args.only.split(",")
    # Most telling first, in case the session ends early: fast seed 0 (with its time to 65 %),
    # the seed baseline, quick, then the other fast seeds and the pipeline check.
    plan = [("peak", ())] if "peak" in only else []
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    fast = [("fast", ("--seed", str(s)) + (("--progress", "2") if s == 0 else ())) for s in seeds]
    if "fast" in only:
        plan += fast[:1]
    if "peer" in only:  # right after fast seed 0: the two figures the targets compare, close in time
        plan.append(("peer", ()))
    if "seed" in only:
        plan.append(("seed", ()))
    if "quick" in only:
        plan.append(("quick", ("--progress", "2")))
    if "fast" in only:
        plan += fast[1:]
    if "pipeline" in only:
        plan.append(("pipeline", ()))
    if args.baseline:
        from _common import worktree

        base_script = worktree(args.baseline, "tta-baseline-") / "benchmarks" / "time_to_accuracy.py"
    else:
        base_script = None
    if base_script:
        results["baseline"] = args.baseline
    for kind, extra in plan:
        if base_script and kind == "fast":  # the baseline right before the same seed here
            results["runs"].append(_sub(kind, args, extra, script=base_script))
        results["runs"].append(_sub(kind, args, extra))
        results["summary"] = summarise(results["runs"])
        save()
    print(json.dumps(results["summary"], indent=1))
    if args.limit or args.epochs:
        return  # a smoke test's figures are not the benchmark's
    if out.resolve() != RESULTS.resolve():  # a partial or trial run: the recorded table stays as it is
        print(f"RESULTS.md left as it is; to table these figures: --markdown --out {out}")
        return
    write_markdown(results)


def _cpu_name() -> str:
    from _common import machine

    return machine().rsplit(",", 2)[0]  # without the core count and kernel


def summarise(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    fast = [r for r in ok if r["kind"] == "fast" and "baseline" not in r]
    base = [r for r in ok if r["kind"] == "fast" and "baseline" in r]
    quick = next((r for r in reversed(ok) if r["kind"] == "quick"), None)  # the latest: the registered epochs
    seed = next((r for r in ok if r["kind"] == "seed"), None)
    peak = next((r for r in ok if r["kind"] == "peak"), None)
    peer = next((r for r in ok if r["kind"] == "peer"), None)
    s = {}
    if fast:
        accs = [r["tta_test_accuracy"] for r in fast]
        s["fast"] = {"seeds": len(fast), "mean_tta_accuracy": round(sum(accs) / len(accs), 5),  # 4 places would round 90.997 % up
                     "min_tta_accuracy": min(accs), "tta_accuracies": accs,
                     "mean_plain_accuracy": round(sum(r["test_accuracy"] for r in fast) / len(fast), 4),
                     "max_seconds": max(r["seconds"] for r in fast),
                     "mean_seconds": round(sum(r["seconds"] for r in fast) / len(fast), 1),
                     "max_peak_rss_gib": max(r["peak_rss_gib"] for r in fast),
                     "images_per_second": round(sum(r["images_per_second"] for r in fast) / len(fast), 1),
                     "tflops": round(sum(r["tflops"] for r in fast) / len(fast), 3),
                     "seconds_to_65": fast[0]["seconds_to_65"]}
        if peak:
            s["fast"]["share_of_bf16_peak"] = round(s["fast"]["tflops"] / peak["bfloat16_matmul_tflops"], 3)
            if "bfloat16_conv_fwd_tflops" in peak:
                s["fast"]["share_of_bf16_conv_peak"] = round(s["fast"]["tflops"] / peak["bfloat16_conv_fwd_tflops"], 3)
    if fast and base:
        paired = [(r, b) for r in fast for b in base if b["seed"] == r["seed"]]
        s["baseline"] = {"ref": base[0]["baseline"], "seeds": [b["seed"] for _, b in paired],
                         "tta_accuracies": [b["tta_test_accuracy"] for _, b in paired],
                         "train_seconds": [b["train_seconds"] for _, b in paired],
                         "this_train_seconds": [r["train_seconds"] for r, _ in paired],
                         "train_seconds_ratio": round(sum(r["train_seconds"] for r, _ in paired)
                                                      / sum(b["train_seconds"] for _, b in paired), 4),
                         "same_accuracies": all(r["tta_test_accuracy"] == b["tta_test_accuracy"] for r, b in paired)}
    if quick:
        s["quick"] = {k: quick[k] for k in ("tta_test_accuracy", "test_accuracy", "seconds", "seconds_to_65",
                                            "images_per_second", "tflops", "peak_rss_gib")}
    if seed:
        s["seed"] = {"seconds_to_65": seed["seconds_to_65"], "images_per_second": seed["images_per_second"]}
    if seed and seed["seconds_to_65"]:
        best = min((r["seconds_to_65"] for r in ok if r["kind"] in ("quick", "fast") and r["seconds_to_65"]),
                   default=None)
        if best:
            s["speedup_to_65_vs_seed"] = round(seed["seconds_to_65"] / best, 2)
    if peak:
        s["peak"] = {k: v for k, v in peak.items() if k.endswith("tflops") or k == "onednn_kernels"}
    if peer:
        s["peer"] = {"tta_accuracy": peer["tta_accuracy"], "seconds": peer["seconds"]}
        for name in ("fast", "quick"):
            if name in s:
                secs = s[name].get("mean_seconds", s[name].get("seconds"))
                s[name]["seconds_vs_peer"] = round(secs / peer["seconds"], 3)
    return s


def write_markdown(results: dict) -> None:
    s = results["summary"]
    md = ROOT / "benchmarks" / "RESULTS.md"
    lines = [f"## Time to accuracy ({results['date'][:10]}, {results['machine']['cpu']}, "
             f"{results['machine']['cpu_count']} cores, TF {results['machine']['tensorflow']})", "",
             f"{results['note']}. Figures: `benchmarks/results/time_to_accuracy.json`; "
             "command: `.venv/bin/python benchmarks/time_to_accuracy.py`.", "",
             "| run | TTA test acc | plain test acc | train + TTA eval (s) | time to 65 % (s) | images/s | TFLOP/s "
             "| peak RSS (GiB) | load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        if "error" in r or r["kind"] in ("peak", "pipeline"):
            continue
        if r["kind"] == "peer":
            lines.append(f"| peer: {r['peer']}, CPU port | {r['tta_accuracy']:.2%} | "
                         f"{r['runs'][0]['plain_accuracy']:.2%} | {r['seconds']:.0f} | – | – | – | "
                         f"{r['peak_rss_gib']:.2f} | {r['load_average_start']:.1f}–{r['load_average_end']:.1f} |")
            continue
        name = r["kind"] + (f" seed {r['seed']}" if r["kind"] == "fast" else "") + (
            f" at {r['baseline']}" if "baseline" in r else "") + (
            f" ({r['epochs']} epochs)" if "epochs" in r else "")
        fmt = lambda v, f="{:.2%}": "–" if v is None else f.format(v)  # noqa: E731
        lines.append(f"| {name} | {fmt(r.get('tta_test_accuracy'))} | {fmt(r.get('test_accuracy'))} | "
                     f"{fmt(r.get('seconds'), '{:.0f}')} | {fmt(r.get('seconds_to_65'), '{:.0f}')} | "
                     f"{r['images_per_second']:.0f} | {fmt(r.get('tflops'), '{:.3f}')} | {r['peak_rss_gib']:.2f} | "
                     f"{r['load_average_start']:.1f}–{r['load_average_end']:.1f} |")
    lines += ["", "Summary: `" + json.dumps(s) + "`", ""]
    text = md.read_text() if md.exists() else "# Benchmark results\n\n"
    marker = "<!-- time_to_accuracy -->"
    if marker in text:
        head, _, rest = text.partition(marker)
        tail = rest.partition("<!-- /time_to_accuracy -->")[2]
        text = head + marker + "\n" + "\n".join(lines) + "<!-- /time_to_accuracy -->" + tail
    else:
        text += f"\n{marker}\n" + "\n".join(lines) + "<!-- /time_to_accuracy -->\n"
    write_text(md, text)


if __name__ == "__main__":
    main()
