"""``cifarlab launch --workers N -- train ...``: a multi-worker cluster on this machine.

Starts N ``cifarlab train`` processes, each with a ``TF_CONFIG`` naming all N workers
on 127.0.0.1 and its own index, so :class:`tf.distribute.MultiWorkerMirroredStrategy`
joins them exactly as it joins machines of a real cluster (docs/scaling.md). Worker 0
is the chief: it writes the run directory; every worker's output is shown, the others'
prefixed with ``[worker i]``.

Network: TensorFlow's worker servers (gRPC, no authentication) listen on every interface
whatever address ``TF_CONFIG`` gives, and anyone who reaches one can run graphs on it
(ReadFile, WriteFile) as the user. So the launcher runs its workers in a private network
namespace of their own (a Linux user and network namespace, no privileges needed) whose
only interface is a loopback: their ports cannot be reached from this machine's other
processes nor from the network, and the workers have no network either (give ``--data``).
Where user namespaces are unavailable the launcher refuses, unless ``--shared-network``
accepts servers on every interface (behind a firewall).

Faults: when a worker exits with an error or is killed, the launcher stops the others
(SIGTERM, then SIGKILL after ``GRACE_S``: a worker waiting for a dead peer in an
all-reduce cannot act on a signal) and exits non-zero with one line naming the worker
and how to resume. SIGINT/SIGTERM to the launcher are passed on to every worker, which
agree on a step, checkpoint and exit 130/143; the launcher then exits 130/143 with one line
saying where the checkpoint stands and how to resume (the workers' own stop lines are dropped).
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import signal
import socket
import struct
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


def _option(cmd: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``cmd``; None when absent."""
    i = next((i for i, a in enumerate(cmd) if a.split("=")[0] == name), None)
    if i is None:
        return None
    return cmd[i].split("=", 1)[1] if "=" in cmd[i] else (cmd[i + 1] if i + 1 < len(cmd) else "")


def _worker_command(cmd: list[str], workers: int) -> tuple[list[str], str, bool]:
    """The workers' command, their run directory, and whether the launcher picked (and made) it."""
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd or cmd[0] != "train":
        raise CifarlabError("launch runs a training command: cifarlab launch --workers N -- train [options]")
    cmd = list(cmd)
    strategy = _option(cmd, "--strategy")
    if strategy is None:
        cmd += ["--strategy", "multiworker"]
    elif strategy != "multiworker":
        raise CifarlabError(f"launch trains with --strategy multiworker, not {strategy!r}")
    out = _option(cmd, "--out")
    if out is not None:
        return cmd, out, False
    # Every worker must name the same run directory: made here, under a name no other run has.
    from cifarlab.fileio import fresh_dir

    out = str(fresh_dir(os.path.join("runs", datetime.now().strftime("%Y%m%d-%H%M%S") + f"-{workers}workers")))
    return cmd + ["--out", out], out, True


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


def launch(workers: int, cmd: list[str], port: int = 0, shared_network: bool = False) -> int:
    """Run ``cmd`` (``["train", ...]``) as ``workers`` local processes; returns the exit status.

    The workers share a private network namespace (only loopback) unless ``shared_network``.
    """
    if not isinstance(workers, int) or workers < 1:
        raise CifarlabError(f"--workers must be a positive whole number, not {workers!r}")
    if port and not 1024 <= port <= 65535 - workers:
        raise CifarlabError(f"--port must leave room for {workers} ports between 1024 and 65535, not {port}")
    network = None if shared_network else PrivateNetwork()
    cmd, out, made_out = _worker_command(cmd, workers)
    ports = list(range(port, port + workers)) if port else free_ports(workers)
    procs: list[subprocess.Popen] = []
    pumps: list[threading.Thread] = []
    received: list[int] = []  # signals the launcher got and passed on
    try:
        for i, cfg in enumerate(tf_configs(ports)):
            env = {**os.environ, "TF_CONFIG": json.dumps(cfg), "PYTHONUNBUFFERED": "1"}
            # A session of its own: Ctrl-C reaches the launcher only, which passes it on once.
            procs.append(network.spawn([sys.executable, "-m", "cifarlab", *cmd], env) if network else
                         subprocess.Popen([sys.executable, "-m", "cifarlab", *cmd], env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True, start_new_session=True))
    except BaseException:
        _stop(procs, grace=0)
        _remove_if_empty(out, made_out)
        raise
    finally:
        if network:
            network.close()
    # The output pumps start only now: a worker is forked into its namespace while the launcher has one thread.
    for i, p in enumerate(procs):
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
    if status:
        _remove_if_empty(out, made_out)
    return status


def _remove_if_empty(out: str, made: bool) -> None:
    """The run directory the launcher made, if the workers left nothing in it."""
    if made:
        try:
            os.rmdir(out)
        except OSError:
            pass  # not empty (the chief's checkpoint, its marker) or gone: kept as it is


class PrivateNetwork:
    """A Linux network namespace with only a loopback interface, shared by the workers of one launch.

    The first worker is forked into a new user namespace (which lets an unprivileged user own a
    network namespace) and a new network namespace, with its user and group ids mapped to
    themselves and the loopback interface brought up; the others join both namespaces. Linux only.
    """

    CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
    SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1

    def __init__(self):
        self.ns_fds: list[int] = []  # the first worker's user and network namespaces
        self._libc = ctypes.CDLL(None, use_errno=True)

    def spawn(self, argv: list[str], env: dict) -> subprocess.Popen:
        err_r, err_w = os.pipe()
        setup = self._create if not self.ns_fds else self._join
        try:
            p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 start_new_session=True, preexec_fn=lambda: setup(err_w))
        except subprocess.SubprocessError:
            os.close(err_w)
            with os.fdopen(err_r, "rb") as f:
                why = f.read().decode(errors="replace") or "unknown reason"
            raise CifarlabError(f"cannot give the workers a private network ({why}); user namespaces seem "
                                "unavailable here. --shared-network runs them on this machine's network, where "
                                "their TensorFlow servers listen on every interface: only behind a firewall") from None
        os.close(err_r)
        os.close(err_w)
        if not self.ns_fds:
            self.ns_fds = [os.open(f"/proc/{p.pid}/ns/{kind}", os.O_RDONLY) for kind in ("user", "net")]
        return p

    def close(self) -> None:
        for fd in self.ns_fds:
            os.close(fd)
        self.ns_fds = []

    # The two functions below run in the forked child, before it executes the worker.
    def _create(self, err_w: int) -> None:
        uid, gid = os.getuid(), os.getgid()
        self._call(err_w, "unshare", self._libc.unshare, self.CLONE_NEWUSER | self.CLONE_NEWNET)
        try:
            for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"), ("gid_map", f"{gid} {gid} 1")):
                with open(f"/proc/self/{name}", "w") as f:
                    f.write(text)
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                flags = struct.unpack("16sh22x", fcntl.ioctl(s, self.SIOCGIFFLAGS, struct.pack("16sh22x", b"lo", 0)))[1]
                fcntl.ioctl(s, self.SIOCSIFFLAGS, struct.pack("16sh22x", b"lo", flags | self.IFF_UP))
        except OSError as e:
            os.write(err_w, f"setting up the namespace: {e.strerror or e}".encode())
            raise

    def _join(self, err_w: int) -> None:
        for fd, kind in zip(self.ns_fds, (self.CLONE_NEWUSER, self.CLONE_NEWNET)):
            self._call(err_w, "setns", self._libc.setns, fd, kind)

    @staticmethod
    def _call(err_w: int, name: str, fn, *args) -> None:
        if fn(*args) != 0:
            e = ctypes.get_errno()
            os.write(err_w, f"{name}: {os.strerror(e)}".encode())
            raise OSError(e, os.strerror(e))


def _stopped(signum: int, out: str) -> str:
    """The launcher's one line after passing a signal on: where the workers' checkpoint stands.

    Read without Keras (``saved_state``): importing TensorFlow here made the line come seconds after
    the workers had stopped."""
    from cifarlab.training import saved_state

    try:
        saved = saved_state.read_state(out)
    except CifarlabError:
        saved = None
    name = signal.Signals(signum).name
    if saved is None:
        return (f"cifarlab: stopped by {name} before the first checkpoint; "
                f"the same command starts the run again (--out {out})")
    return (f"cifarlab: stopped by {name}; the workers saved a checkpoint ({saved_state.where(saved)}) in "
            f"{saved_state.path(out).parent}. To resume, run the same command again (--out {out})")


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
