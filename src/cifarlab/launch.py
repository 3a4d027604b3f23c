"""``cifarlab launch --workers N -- train ...``: a multi-worker cluster on this machine.

Starts N ``cifarlab train`` processes, each with a ``TF_CONFIG`` naming all N workers
on 127.0.0.1 and its own index, so :class:`tf.distribute.MultiWorkerMirroredStrategy`
joins them exactly as it joins machines of a real cluster (docs/scaling.md). Worker 0
is the chief: it writes the run directory; every worker's output is shown, the others'
prefixed with ``[worker i]``.

Faults: when a worker exits with an error or is killed, the launcher stops the others
(SIGTERM, then SIGKILL after ``GRACE_S``: a worker waiting for a dead peer in an
all-reduce cannot act on a signal) and exits non-zero with one line naming the worker
and how to resume. SIGINT/SIGTERM to the launcher are passed on to every worker, which
agree on a step, checkpoint and exit 130/143; the launcher then exits 130/143 with one line
saying where the checkpoint stands and how to resume (the workers' own stop lines are dropped).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime

from cifarlab.errors import CifarlabError

# After a worker fails, how long the others get to exit on their own before SIGKILL.
GRACE_S = 10.0
# After the launcher passes on SIGINT/SIGTERM, how long the workers get to checkpoint.
STOP_WAIT_S = 120.0
HOST = "127.0.0.1"


def free_ports(n: int) -> list[int]:
    """N ports on 127.0.0.1 that were free a moment ago (the OS picks them)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tf_configs(ports: list[int]) -> list[dict]:
    """One ``TF_CONFIG`` per worker: the whole cluster plus that worker's index."""
    cluster = {"worker": [f"{HOST}:{p}" for p in ports]}
    return [{"cluster": cluster, "task": {"type": "worker", "index": i}} for i in range(len(ports))]


def _worker_command(cmd: list[str], workers: int) -> tuple[list[str], str]:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd or cmd[0] != "train":
        raise CifarlabError("launch runs a training command: cifarlab launch --workers N -- train [options]")
    cmd = list(cmd)
    opts = {a.split("=")[0] for a in cmd}
    if "--strategy" not in opts:
        cmd += ["--strategy", "multiworker"]
    if "--out" in opts:
        i = next(i for i, a in enumerate(cmd) if a.split("=")[0] == "--out")
        out = cmd[i].split("=", 1)[1] if "=" in cmd[i] else (cmd[i + 1] if i + 1 < len(cmd) else "")
    else:
        # Every worker must name the same run directory: pick it here, not in each worker.
        out = os.path.join("runs", datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{workers}workers")
        cmd += ["--out", out]
    return cmd, out


def _pump(stream, sink, prefix: str, received: list[int]) -> None:
    for line in iter(stream.readline, ""):
        if received and line.startswith(("cifarlab: stopped by", "cifarlab: interrupted")):
            continue  # each worker's own stop line: the launcher sums them up in one
        sink.write(prefix + line)
        sink.flush()
    stream.close()


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch(workers: int, cmd: list[str], port: int = 0) -> int:
    """Run ``cmd`` (``["train", ...]``) as ``workers`` local processes; returns the exit status."""
    if not isinstance(workers, int) or workers < 1:
        raise CifarlabError(f"--workers must be a positive whole number, not {workers!r}")
    if port and not 1024 <= port <= 65535 - workers:
        raise CifarlabError(f"--port must leave room for {workers} ports between 1024 and 65535, not {port}")
    cmd, out = _worker_command(cmd, workers)
    ports = list(range(port, port + workers)) if port else free_ports(workers)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    received: list[int] = []  # signals the launcher got and passed on
    for i, cfg in enumerate(tf_configs(ports)):
        env = {**os.environ, "TF_CONFIG": json.dumps(cfg), "PYTHONUNBUFFERED": "1"}
        # A session of its own: Ctrl-C reaches the launcher only, which passes it on once.
        p = subprocess.Popen([sys.executable, "-m", "cifarlab", *cmd], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)
        procs.append(p)
        prefix = "" if i == 0 else f"[worker {i}] "
        for stream, sink in ((p.stdout, sys.stdout), (p.stderr, sys.stderr)):
            t = threading.Thread(target=_pump, args=(stream, sink, prefix, received), daemon=True)
            t.start()
            pumps.append(t)

    def forward(signum, frame):
        received.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    saved = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        status = _watch(procs, received, out)
    finally:
        for s, old in saved.items():
            signal.signal(s, old)
        for t in pumps:
            t.join(timeout=5)
    if received:
        print(_stopped(received[0], out), file=sys.stderr, flush=True)
    return status


def _stopped(signum: int, out: str) -> str:
    """The launcher's one line after passing a signal on: where the workers' checkpoint stands."""
    from cifarlab._tf import import_quietly

    import_quietly()  # the checkpoint module imports Keras
    from cifarlab.training import checkpoint

    try:
        saved = checkpoint.read_state(out)
    except CifarlabError:
        saved = None
    name = signal.Signals(signum).name
    if saved is None:
        return (f"cifarlab: stopped by {name} before the first checkpoint; "
                f"the same command starts the run again (--out {out})")
    return (f"cifarlab: stopped by {name}; the workers saved a checkpoint ({checkpoint.where(saved)}) in "
            f"{checkpoint.path(out).parent}. To resume, run the same command again (--out {out})")


def _watch(procs: list[subprocess.Popen], received: list[int], out: str) -> int:
    deadline = None
    while True:
        codes = [p.poll() for p in procs]
        if all(c is not None for c in codes):
            break
        if received and deadline is None:
            deadline = time.monotonic() + STOP_WAIT_S
        failed = [(i, c) for i, c in enumerate(codes) if c not in (None, 0)]
        if failed and not received:
            i, code = failed[0]
            print(f"cifarlab: error: worker {i} {_describe(code)}; stopping the other workers. "
                  f"To resume from the last checkpoint, run the same command again (--out {out})",
                  file=sys.stderr, flush=True)
            _stop(procs)
            return code if code > 0 else 1
        if deadline is not None and time.monotonic() > deadline:
            _stop(procs, grace=0)
            break
        time.sleep(0.1)
    codes = [p.returncode for p in procs]
    if received:
        return 128 + received[0]
    bad = [c for c in codes if c != 0]
    return (bad[0] if bad[0] > 0 else 1) if bad else 0


def _stop(procs: list[subprocess.Popen], grace: float = GRACE_S) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    end = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
