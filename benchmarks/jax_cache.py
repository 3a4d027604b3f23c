#!/usr/bin/env python
"""What the command line's JAX compilation cache saves: each command with the cache off and with it warm.

On JAX every process compiles its model's weight initialisers (one XLA program per weight shape)
and its steps before the first image. ``cifarlab`` keeps the compiled programs in the user's cache
folder (``backend/jax.py``: ``use_compilation_cache``). This runs each command with the cache
switched off (``JAX_ENABLE_COMPILATION_CACHE=false``) and with a cache an earlier run filled,
alternately (off, warm, warm, off, ...), and reports CPU and wall seconds of each process.

    benchmarks/jax_cache.py --rounds 2

Figures: ``results/jax_cache.json`` and the ``jax_cache`` section of RESULTS.md. Needs JAX and
the shared CIFAR-10 copy beside the repository (a 500-image slice of it is trained on).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tarfile
import tempfile
from pathlib import Path

from _common import ROOT, SHARED_ARCHIVE, record, run_measured

sys.path.insert(0, str(ROOT / "tests"))
from slices import slice_archive  # noqa: E402  (the tests' real-format slice of the shared copy)


def run(argv: list[str], cache_home: Path, warm: bool) -> dict:
    """One ``cifarlab`` process on JAX; CPU (user + system) and wall seconds."""
    env = {"PYTHONPATH": str(ROOT / "src"), "KERAS_BACKEND": "jax", "XDG_CACHE_HOME": str(cache_home),
           "TF_CPP_MIN_LOG_LEVEL": "2", "CIFARLAB_AUTOTUNE": "0",
           "JAX_COMPILATION_CACHE_DIR": None,  # the command line's own cache, not one set for this shell
           "JAX_ENABLE_COMPILATION_CACHE": None if warm else "false"}
    r = run_measured([sys.executable, "-m", "cifarlab", "--backend", "jax", *argv], env=env, timeout=1800)
    if r["returncode"] != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{r['stderr'][-2000:]}")
    return {"cpu": r["cpu_seconds"], "wall": r["wall_seconds"]}


def joined(runs: list[dict], key: str) -> str:
    return ", ".join(str(r[key]) for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2, help="runs of each command per setting (default 2)")
    args = ap.parse_args()
    if not SHARED_ARCHIVE.is_file() or not tarfile.is_tarfile(SHARED_ARCHIVE):
        raise SystemExit(f"the shared CIFAR-10 copy is not at {SHARED_ARCHIVE}")
    work = Path(tempfile.mkdtemp(prefix="jax-cache-"))
    try:
        archive = slice_archive(SHARED_ARCHIVE, work / "slice.tar.gz", 500, 500)
        cache_home, run_dir = work / "cache", work / "run"
        train = ["train", "--data", str(archive), "--recipe", "quick", "--batch-size", "100", "--epochs", "1",
                 "--seed", "0", "--quiet", "--no-report"]
        run(train + ["--out", str(run_dir)], cache_home, warm=True)  # fills the cache and makes a run to load
        commands = {"summary quick": lambda i: ["summary", "quick"],  # i: the run's number
                    "evaluate (load + 500 test images)": lambda i: ["evaluate", str(run_dir)],
                    "train (quick, 450 images, 1 epoch)": lambda i: train + ["--out", str(work / f"train-{i}")]}
        rows, figures = [], {}
        for name, argv in commands.items():
            got = {False: [], True: []}
            for i in range(args.rounds * 2):
                warm = i % 4 in (1, 2)  # off, warm, warm, off: a drift of the machine weighs on both
                got[warm].append(run(argv(i), cache_home, warm))
            off, on = (statistics.mean(r["cpu"] for r in got[w]) for w in (False, True))
            figures[name] = {"off": got[False], "warm": got[True], "cpu_ratio": round(on / off, 3)}
            rows.append(f"| {name} | {joined(got[False], 'cpu')} | {joined(got[True], 'cpu')} | {on / off:.2f} | "
                        f"{joined(got[False], 'wall')} | {joined(got[True], 'wall')} |")
        size = sum(p.stat().st_size for p in (cache_home / "cifarlab" / "jax").glob("*"))
        figures["cache_bytes"] = size
        table = (f"`benchmarks/jax_cache.py --rounds {args.rounds}`: each `cifarlab --backend jax` command as a "
                 "process with the compilation cache off and warm, alternately. The cache held "
                 f"{size / 2**20:.1f} MiB at the end.\n\n"
                 "| command | CPU s, off | CPU s, warm | warm / off | wall s, off | wall s, warm |\n"
                 "|---|---|---|---|---|---|\n" + "\n".join(rows))
        print(table)
        record("jax_cache", figures, table)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
