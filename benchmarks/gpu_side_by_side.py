"""cifarlab ``fast`` beside airbench94_muon on one GPU, in the same call (issue 18).

On the GPU machine (PyTorch and JAX, no TensorFlow, no network), through ``gpu_side_by_side.sh``,
which installs the wheels that travelled and then runs::

    python3 benchmarks/gpu_side_by_side.py --pack .gpu/cifar10-jpeg-pack.npz --peers .gpu/peers --out $OUT

On a CPU, the same path on a small slice, one run each (the test suite runs it; the peer part needs
torchvision, so it is skipped where that is missing)::

    python benchmarks/gpu_side_by_side.py --dry-run --pack ../shared/data/cifar10-jpeg-pack.npz --out /tmp/gpu

Steps, each in its own process so that each framework has the GPU to itself:

1. ``peer``: airbench94_muon as upstream (``torch.compile``, one warm-up run), its timed-run count
   lowered from 200 to ``--runs`` in a scratch copy (the only change; upstream's file is read from
   ``--peers`` and never copied into the project). Its own table gives TTA accuracy and seconds.
2. ``cifarlab`` on each ``--backends`` (default ``jax``): the registered ``fast`` recipe through the
   portable loop on all 50,000 training images, one warm-up run (compiles every step and every
   evaluation shape), then ``--runs`` seeds, each timed as airbench times itself: compilation and data
   loading excluded, whitening init, training and TTA included. Also its FLOP rate against the bf16
   matmul rate measured in the same process, the peak device memory, and where a step's time goes
   (:func:`step_anatomy`).

Writes ``OUT/gpu_side_by_side.json`` (and, with ``--record``, ``benchmarks/results/`` + RESULTS.md).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"


# -- data ---------------------------------------------------------------------------------------

def _decode(blobs: list[bytes]):
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def load_pack(path: str | os.PathLike, limit: int | None = None, workers: int | None = None):
    """The JPEG pack as ``{"train": (x, y), "test": (x, y)}``: uint8 ``(N, 32, 32, 3)`` and int64 labels,
    in the pack's order (that of the binary archive). ``limit``: the first that many training images
    (and a fifth as many test images)."""
    from concurrent.futures import ProcessPoolExecutor

    import numpy as np

    z = np.load(path)
    out = {}
    for split, n in (("train", limit), ("test", None if limit is None else max(limit // 5, 1))):
        blob, off = z[f"{split}_jpeg"].tobytes(), z[f"{split}_offsets"]
        blobs = [blob[a:b] for a, b in zip(off[:-1], off[1:])][:n]
        chunks = [blobs[i:i + 2000] for i in range(0, len(blobs), 2000)]
        with ProcessPoolExecutor(workers or os.cpu_count()) as pool:
            x = np.concatenate(list(pool.map(_decode, chunks)))
        out[split] = (x, z[f"{split}_labels"][: len(x)].astype(np.int64))
    return out


# -- the peer -----------------------------------------------------------------------------------

def run_peer(pack: str, peers: Path, runs: int, python: str, dry_run: bool, limit: int | None) -> dict:
    """airbench94_muon on the same images (its own converter reads the pack): upstream's script on the GPU,
    the shipped CPU port in a dry run (``benchmarks/peer.py``, which the CPU benchmarks use too)."""
    sys.path.insert(0, str(HERE))
    from peer import PeerError
    from peer import run_peer as run

    try:
        res = run(pack, runs=runs, threads=os.cpu_count() or 2, python=python, peers=peers, limit=limit,
                  gpu=not dry_run)
    except PeerError as e:
        return {"error": str(e)}
    table = res["runs"]
    return {**res, "timed_runs": len(table), "changes": res["port"],
            **_stats([r["tta_accuracy"] for r in table], [r["seconds"] for r in table])}


def _stats(accs: list[float], secs: list[float]) -> dict:
    sd = lambda v: round(statistics.stdev(v), 5) if len(v) > 1 else 0.0  # noqa: E731
    return {"tta_accuracy_mean": round(statistics.mean(accs), 5), "tta_accuracy_std": sd(accs),
            "seconds_mean": round(statistics.mean(secs), 3), "seconds_std": sd(secs)}


# -- cifarlab -----------------------------------------------------------------------------------

def matmul_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """bf16 ``n``^3 matmul rate of the current backend's first device, the ceiling a step is read against."""
    from keras import ops

    a = ops.cast(ops.ones((n, n)), "bfloat16")
    f = _compiled(lambda x: ops.matmul(x, x))
    _sync(f(a))
    t0 = time.perf_counter()
    for _ in range(reps):
        r = f(a)
    _sync(r)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12  # unrounded: a CPU's dry run is under 0.05


def _compiled(fn):
    from cifarlab.backend import glue

    return glue().compile_forward(fn)


def _sync(x) -> None:
    """Wait until the device has computed ``x``."""
    import keras

    b = keras.backend.backend()
    if b == "jax":
        x.block_until_ready()
    elif b == "torch":
        import torch

        if torch.cuda.is_available():
            torch.cuda.synchronize()
    else:
        keras.ops.convert_to_numpy(x)


def peak_memory_bytes() -> int | None:
    import keras

    b = keras.backend.backend()
    if b == "jax":
        import jax

        stats = jax.devices()[0].memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    if b == "torch":
        import torch

        return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
    return None


def step_anatomy(trainer, steps: int = 10) -> dict:
    """Where a steady training step's time goes: the step with the device awaited after each one
    (device time plus one host round trip), queued back to back (what training sees), and the
    host's own share (the time to build and queue a step's inputs, measured without waiting)."""
    import numpy as np

    idx = np.arange(trainer.batch_size)

    def run(wait: bool) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            trainer.timed_step(idx, wait=wait)
        trainer.timed_step(idx, wait=True)
        return (time.perf_counter() - t0) / (steps + 1)

    run(True)  # compiled already; this warms the caches
    awaited, queued = run(True), run(False)
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.timed_step(idx, wait=False)
    host = (time.perf_counter() - t0) / steps
    trainer.timed_step(idx, wait=True)
    return {"step_seconds_awaited": round(awaited, 5), "step_seconds_queued": round(queued, 5),
            "host_seconds_per_step": round(host, 5),
            "host_sync_seconds_per_step": round(max(awaited - queued, 0.0), 5)}


def run_cifarlab(args) -> dict:
    """``fast`` on the current Keras backend: warm-up, then ``args.runs`` timed seeds."""
    import keras

    from cifarlab.models.fast import model_flops
    from cifarlab.registry import get_model, get_recipe
    from cifarlab.training import precision
    from cifarlab.training.portable import PortableTrainer

    t_load = time.perf_counter()
    data = load_pack(args.pack, args.limit)
    (x, y), (xt, yt) = data["train"], data["test"]
    load_seconds = time.perf_counter() - t_load
    recipe = get_recipe(args.recipe)
    if args.epochs:
        recipe = recipe.with_overrides(epochs=args.epochs)
    prec = precision.resolve(recipe.precision)
    precision.apply(prec)
    spec = get_model(recipe.model)

    def fresh_weights(seed: int):
        keras.utils.set_random_seed(seed)
        return spec.build(num_classes=10).get_weights()

    keras.utils.set_random_seed(1000)
    trainer = PortableTrainer(spec.build(num_classes=10), recipe, x, y, seed=1000)
    t0 = time.perf_counter()
    trainer.fit(recipe.epochs)  # warm-up: compiles every step variant
    trainer.predict_tta(xt)  # ... and every evaluation shape
    warmup_seconds = time.perf_counter() - t0
    peak_tflops = matmul_peak_tflops(n=1024 if args.dry_run else 8192, reps=3 if args.dry_run else 20)

    runs = []
    for seed in range(args.runs):
        weights = fresh_weights(seed)
        t0 = time.perf_counter()
        trainer.restart(weights, seed)  # whitening init included, as airbench times it
        res = trainer.fit(recipe.epochs)
        t_tta = time.perf_counter()
        probs = trainer.predict_tta(xt)
        seconds = time.perf_counter() - t0
        opts = recipe.options
        share, views = opts.tta_share, (6 if opts.tta == "flip_translate" else 2 if opts.tta == "flip" else 1)
        flops = trainer.train_flops(res.steps) + model_flops(trainer.model) * len(xt) * (1 + share * (views - 1))
        runs.append({"seed": seed, "tta_accuracy": float((probs.argmax(1) == yt).mean()),
                     "plain_accuracy": float((trainer.predict(xt).argmax(1) == yt).mean()),
                     "seconds": round(seconds, 3), "tta_seconds": round(time.perf_counter() - t_tta, 3),
                     "train_seconds": round(res.train_seconds, 3), "tflops": round(flops / seconds / 1e12, 2)})
        print(f"  {keras.backend.backend()} seed {seed}: {runs[-1]}", flush=True)
    # a run's sum of FLOPs over its wall time; the matmul rate of the same device as the ceiling
    mean_tflops = statistics.mean(r["tflops"] for r in runs)
    return {"backend": keras.backend.backend(), "recipe": recipe.name, "epochs": recipe.epochs,
            "precision": prec, "train_images": len(y), "test_images": len(yt), "runs": runs,
            "data_load_seconds": round(load_seconds, 1), "warmup_seconds": round(warmup_seconds, 1),
            "bf16_matmul_peak_tflops": round(peak_tflops, 3), "share_of_peak": round(mean_tflops / peak_tflops, 4),
            "peak_memory_gib": None if peak_memory_bytes() is None else round(peak_memory_bytes() / 2**30, 2),
            "step_anatomy": (step_anatomy(trainer, steps=3 if args.dry_run else 20) if hasattr(trainer, "timed_step")
                             else "not measured: this trainer has no timed_step"),
            "device": _device_name(),
            **_stats([r["tta_accuracy"] for r in runs], [r["seconds"] for r in runs])}


def _device_name() -> str:
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return str(jax.devices()[0].device_kind)
    if keras.backend.backend() == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "?"


# -- driver -------------------------------------------------------------------------------------

def _child(args) -> None:
    sys.path.insert(0, str(ROOT / "src"))
    print("RESULT=" + json.dumps(run_cifarlab(args)), flush=True)


def _run_backend(backend: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", "--pack", args.pack, "--runs", str(args.runs), "--recipe", args.recipe]
    for flag in ("limit", "epochs"):
        if getattr(args, flag):
            cmd += [f"--{flag}", str(getattr(args, flag))]
    if args.dry_run:
        cmd.append("--dry-run")
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join(
        [str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])])}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    line = next((ln for ln in p.stdout.splitlines() if ln.startswith("RESULT=")), None)
    if p.returncode or line is None:
        return {"backend": backend, "error": (p.stderr.strip().splitlines() or ["?"])[-1],
                "wall_seconds": round(time.perf_counter() - t0, 1)}
    out = json.loads(line[len("RESULT="):])
    out["wall_seconds"] = round(time.perf_counter() - t0, 1)
    return out


def table(res: dict) -> str:
    rows = ["| run | TTA accuracy (mean ± std) | seconds (mean ± std) | share of bf16 matmul peak | peak memory (GiB) |",
            "|---|---|---|---|---|"]
    peer = res.get("peer", {})
    if "tta_accuracy_mean" in peer:
        rows.append(f"| airbench94_muon ({peer['timed_runs']} runs; {peer['changes']}) | "
                    f"{peer['tta_accuracy_mean']:.2%} ± {peer['tta_accuracy_std']:.2%} | "
                    f"{peer['seconds_mean']:.2f} ± {peer['seconds_std']:.2f} | – | – |")
    for c in res.get("cifarlab", []):
        if "error" in c:
            rows.append(f"| cifarlab fast, {c['backend']} | error: {c['error']} | | | |")
            continue
        rows.append(f"| cifarlab {c['recipe']}, {c['backend']}, {c['precision']} ({len(c['runs'])} seeds) | "
                    f"{c['tta_accuracy_mean']:.2%} ± {c['tta_accuracy_std']:.2%} | "
                    f"{c['seconds_mean']:.2f} ± {c['seconds_std']:.2f} | {c['share_of_peak']:.1%} of "
                    f"{c['bf16_matmul_peak_tflops']} TFLOP/s | {c['peak_memory_gib']} |")
        if "tta_accuracy_mean" in peer:
            rows.append(f"| ratio cifarlab / airbench, {c['backend']} | | "
                        f"{c['seconds_mean'] / peer['seconds_mean']:.2f}x | | |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pack", default=str(SHARED / "data" / "cifar10-jpeg-pack.npz"))
    ap.add_argument("--peers", default=str(SHARED / "peers"))
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each, after a warm-up (default 5)")
    ap.add_argument("--backends", default="jax", help="comma-separated Keras backends for cifarlab (default jax)")
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--dry-run", action="store_true", help="CPU check: 2,000 training images, 1 run, 1 epoch")
    ap.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--epochs", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=".", help="folder for gpu_side_by_side.json")
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results + RESULTS.md")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.dry_run:
        args.runs, args.limit, args.epochs = 1, args.limit or 2000, args.epochs or 1
    if args.child:
        return _child(args) or 0
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "dry_run": args.dry_run,
           "runs": args.runs, "limit": args.limit, "epochs": args.epochs}
    sys.path.insert(0, str(HERE))
    from peer import peer_python

    if not args.no_peer:
        python = sys.executable if not args.dry_run else peer_python()
        have = subprocess.run([python, "-c", "import torchvision"], capture_output=True).returncode == 0
        res["peer"] = (run_peer(args.pack, Path(args.peers), args.runs, python, args.dry_run, args.limit) if have
                       else {"skipped": f"{python} has no torchvision (benchmarks/peer_env.sh makes one)"})
        print(f"peer: {json.dumps({k: v for k, v in res['peer'].items() if k != 'runs'})}", flush=True)
    res["cifarlab"] = [_run_backend(b, args) for b in args.backends.split(",")]
    for c in res["cifarlab"]:
        print(f"cifarlab {c['backend']}: {json.dumps({k: v for k, v in c.items() if k != 'runs'})}", flush=True)
    res["table"] = table(res)
    print(res["table"])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(res, indent=1) + "\n"
    tmp = out / ".gpu_side_by_side.json.tmp"
    tmp.write_text(text)
    tmp.replace(out / "gpu_side_by_side.json")
    if args.record:
        from _common import record

        record("gpu_side_by_side", res, res["table"])
    failed = [c for c in res["cifarlab"] if "error" in c] or ("error" in res.get("peer", {}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
