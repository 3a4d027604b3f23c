"""Run the published record script (airbench94_muon) on this machine, as the benchmarks' peer.

    .venv/bin/python benchmarks/peer.py [--data ARCHIVE] [--runs 1] [--threads 2] [--out results/peer.json]

The peer's files stay where they are shipped (``../shared/peers/``: the upstream script, its
licence, a CPU port and a data converter); nothing of them is copied into the project. In a
scratch folder this writes the peer's ``cifar10/{train,test}.pt`` from the same archive cifarlab
trains on, derives the CPU version of the script with the shipped port, runs it, and reads the
figures from its own table: its ``eval`` row is the TTA accuracy and the seconds of training +
TTA, timed as airbench times itself (data loading excluded, whitening init and TTA included).

``time_to_accuracy.py`` calls :func:`run_peer` in the same run as cifarlab's recipes, so the two
are compared on the same machine at the same hour.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS = HERE.parent.parent / "shared" / "peers"
SCRIPT = "airbench94_muon.py"
# The peer needs torchvision, which PyTorch's CPU build here cannot sit beside: it gets a virtual
# environment of its own (benchmarks/peer_env.sh), outside the project's dependencies.
PEER_VENV = HERE.parent / ".venv-peer"


def peer_python() -> str:
    """``$CIFARLAB_PEER_PYTHON``, else the peer's own virtual environment, else this interpreter."""
    venv = PEER_VENV / "bin" / "python"
    return os.environ.get("CIFARLAB_PEER_PYTHON") or (str(venv) if venv.exists() else sys.executable)

# One row of the peer's table: "|  run  |  epoch  |  train_acc  |  val_acc  |  tta_val_acc  |  time_seconds  |".
_ROW = re.compile(r"^\|\s*(\S*)\s*\|\s*(\S+)\s*\|\s*(\S*)\s*\|\s*(\S*)\s*\|\s*(\S*)\s*\|\s*(\S+)\s*\|$")


class PeerError(RuntimeError):
    pass


def parse_table(text: str) -> list[dict]:
    """The runs in the peer's printed table: ``[{"run", "tta_accuracy", "plain_accuracy", "seconds",
    "seconds_by_epoch"}]``, one per ``eval`` row; ``plain_accuracy`` is the last epoch's ``val_acc``,
    ``seconds_by_epoch`` the peer's running total of timed seconds at each epoch's end."""
    runs, run, last = [], None, {}
    for line in text.splitlines():
        m = _ROW.match(line.strip())
        if not m or m.group(2) == "epoch":
            continue
        run_id, epoch, _train, val, tta, secs = m.groups()
        run = run_id or run
        if epoch == "eval":
            runs.append({"run": run, "tta_accuracy": float(tta), "plain_accuracy": last.get("val"),
                         "seconds": float(secs), "seconds_by_epoch": last.get("seconds", [])})
            last = {}
        else:
            last.setdefault("seconds", []).append(float(secs))
            last["val"] = float(val) if val else None
    return runs


def _shrink(folder: Path, limit: int) -> None:
    """Keep the first ``limit`` training images (and a fifth as many test images) of the peer's files:
    for smoke tests only, the peer itself has no such option."""
    import torch

    for name, n in (("train", limit), ("test", max(limit // 5, 1))):
        d = torch.load(folder / f"{name}.pt")
        d.update(images=d["images"][:n].clone(), labels=d["labels"][:n].clone())
        torch.save(d, folder / f"{name}.pt")


def run_peer(data: str | os.PathLike, runs: int = 1, threads: int = 2, python: str | None = None,
             peers: Path = PEERS, timeout: float = 7200, limit: int | None = None, gpu: bool = False) -> dict:
    """Run ``runs`` timed runs of the peer on ``data`` (``limit``: the first that many training images,
    for smoke tests): on a CPU through the shipped port with ``threads`` torch threads; with ``gpu``,
    upstream's script itself (``torch.compile``, a warm-up run), its 200 timed runs lowered to ``runs``
    in a scratch copy, the only change.

    Returns ``{"runs": [...], "tta_accuracy": mean, "seconds": mean, ...}``; raises
    :class:`PeerError` with the peer's last output line when it cannot run."""
    if not (peers / SCRIPT).is_file():
        raise PeerError(f"peer script not found: {peers / SCRIPT}")
    python = python or peer_python()
    with tempfile.TemporaryDirectory(prefix="cifarlab-peer-") as tmp:
        work = Path(tmp)
        (work / "cifar10").mkdir()
        env = {**os.environ, "RUNS": str(runs), "THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
        if gpu:
            src = (peers / SCRIPT).read_text()
            if "range(200)" not in src:
                raise PeerError(f"upstream changed: 'range(200)' not found in {SCRIPT}")
            (work / SCRIPT).write_text(src.replace("range(200)", f"range({runs})"))
            port, script = [], work / SCRIPT
        else:
            port, script = [[python, str(peers / "cpu_port.py"), str(peers / SCRIPT), str(work)]], \
                work / "airbench94_muon_cpu.py"
        steps = [[python, str(peers / "make_airbench_data.py"), str(data), str(work / "cifar10")], *port,
                 [python, str(script)]]
        t0 = time.perf_counter()
        for cmd in steps:
            p = subprocess.run(cmd, cwd=work, capture_output=True, text=True, env=env, timeout=timeout)
            if p.returncode:
                last = (p.stderr.strip().splitlines() or p.stdout.strip().splitlines() or ["?"])[-1]
                raise PeerError(f"{Path(cmd[1] if len(cmd) > 1 else cmd[0]).name} exited {p.returncode}: {last}")
            if limit and cmd is steps[0]:
                _shrink(work / "cifar10", limit)
        table = parse_table(p.stdout)
    if not table:
        raise PeerError("the peer printed no eval row")
    n = len(table)
    torch_version = subprocess.run([python, "-c", "import torch; print(torch.__version__)"], capture_output=True,
                                   text=True).stdout.strip()
    return {"peer": SCRIPT, "torch": torch_version, "threads": threads, "limit": limit, "runs": table,
            "port": (f"upstream, range(200) -> range({runs}) only" if gpu
                     else "shared/peers/cpu_port.py (bf16 weights, no torch.compile)"),
            "wall_seconds": round(time.perf_counter() - t0, 1),
            "tta_accuracy": round(sum(r["tta_accuracy"] for r in table) / n, 5),
            "seconds": round(sum(r["seconds"] for r in table) / n, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared" / "data" / "cifar10-jpeg-binary.tar.gz"))
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--limit", type=int, help="first N training images only (smoke test)")
    ap.add_argument("--out", help="also write the figures to this JSON file")
    args = ap.parse_args()
    try:
        res = run_peer(args.data, args.runs, args.threads, limit=args.limit)
    except PeerError as e:
        sys.exit(f"peer: {e}")
    text = json.dumps(res, indent=1)
    print(text)
    if args.out:
        sys.path.insert(0, str(HERE.parent / "src"))
        from cifarlab.fileio import write_text

        write_text(args.out, text + "\n")


if __name__ == "__main__":
    main()
