"""Where trials run: local worker processes or a Ray cluster, behind one driver loop.

A pool runs jobs (:mod:`cifarlab.experiments.trial`) and hands back messages
``(key, message)``: per-epoch rows, which the driver answers go/stop, and one result
per attempt. :func:`drive` keeps the pool full, answers the epochs, and retries an
attempt whose worker died (killed, out of memory, crashed) up to ``retries`` times:
the retry trains in the same run directory, so it resumes from the last checkpoint.

- :class:`LocalPool`: ``--workers N`` processes on this machine, each with its share of the
  CPU cores as TensorFlow/OpenMP threads (and pinned to those cores with ``pin=True``:
  on a machine shared with other jobs, pinning can leave a worker on the busier core);
  a worker dies with its driver (``PR_SET_PDEATHSIG``), so a killed sweep leaves no orphans.
- :class:`RayPool`: ``--ray auto|local|HOST:PORT``, one Ray task per trial with
  ``num_cpus``/``num_gpus`` resources, in a fresh worker process each (``max_calls=1``).
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from cifarlab.errors import CifarlabError

FINAL = ("done", "stopped", "error", "interrupted")
RAY_CONNECT_TIMEOUT_S = 5.0


def _pdeathsig() -> None:
    """In the child, before exec: be killed when the driver dies (Linux; elsewhere a no-op)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def core_shares(workers: int, cores: list[int] | None = None) -> list[list[int]]:
    """The CPU cores of each of ``workers`` workers: even contiguous shares, or one core each, shared round-robin."""
    cores = sorted(cores if cores is not None else os.sched_getaffinity(0))
    if workers >= len(cores):
        return [[cores[i % len(cores)]] for i in range(workers)]
    size, extra = divmod(len(cores), workers)
    shares, start = [], 0
    for i in range(workers):
        n = size + (i < extra)
        shares.append(cores[start:start + n])
        start += n
    return shares


def local_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES entries: that variable's, else one per ``nvidia-smi -L`` line."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU ")]


class LocalPool:
    """``workers`` local processes (``python -m cifarlab.experiments.worker``), one per running trial.

    With GPUs, each worker also sees only its share of them (``CUDA_VISIBLE_DEVICES``, split as
    the cores are); workers sharing a GPU allocate its memory as they need it.
    """

    def __init__(self, workers: int, log_dir: Path, cores: list[int] | None = None, gpus: list[str] | None = None,
                 pin: bool = False):
        if workers < 1:
            raise CifarlabError(f"--workers must be at least 1, not {workers}")
        self.shares = core_shares(workers, cores)
        self.pin = pin
        gpus = local_gpus() if gpus is None else gpus
        self.gpu_shares = [[gpus[i] for i in share] for share in core_shares(workers, list(range(len(gpus))))] \
            if gpus else None
        self.free_slots = list(range(workers))
        self.log_dir = log_dir
        self.running: dict[str, dict] = {}
        self.messages: queue.Queue = queue.Queue()

    def describe(self) -> dict:
        return {"executor": "local", "workers": len(self.shares), "cores": self.shares, "pinned": self.pin,
                "gpus": self.gpu_shares}

    def free(self) -> int:
        return len(self.free_slots)

    def busy(self) -> int:
        return len(self.running)

    def start(self, job: dict) -> None:
        slot = self.free_slots.pop(0)
        cores = self.shares[slot]
        job = {**job, "threads": len(cores)}
        env = {**os.environ, "OMP_NUM_THREADS": str(len(cores)), "TF_NUM_INTRAOP_THREADS": str(len(cores)),
               "TF_NUM_INTEROP_THREADS": str(min(2, len(cores))), "TF_CPP_MIN_LOG_LEVEL": "2"}
        if self.gpu_shares:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(self.gpu_shares[slot])
            if len(self.shares) > len(set(sum(self.gpu_shares, []))):  # shared GPUs: no worker takes all memory
                env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{job['key']}.log", "ab") as log:

            def child() -> None:
                _pdeathsig()
                if self.pin and hasattr(os, "sched_setaffinity"):
                    os.sched_setaffinity(0, cores)

            proc = subprocess.Popen([sys.executable, "-m", "cifarlab.experiments.worker"], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=log, env=env, preexec_fn=child)
        try:
            proc.stdin.write((json.dumps(job) + "\n").encode())
            proc.stdin.flush()
        except BrokenPipeError:
            pass  # it died at once: its reader reports that, with its log's last line
        reader = threading.Thread(target=self._read, args=(job["key"], proc), daemon=True)
        self.running[job["key"]] = {"proc": proc, "slot": slot, "final": False}
        reader.start()

    def _read(self, key: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            try:
                self.messages.put((key, json.loads(line)))
            except ValueError:
                continue  # not a protocol line
        self.messages.put((key, None))

    def poll(self, timeout: float) -> list[tuple[str, dict]]:
        out = []
        try:
            item = self.messages.get(timeout=timeout)
            while True:
                out.extend(self._handle(*item))
                item = self.messages.get_nowait()
        except queue.Empty:
            pass
        return out

    def _handle(self, key: str, msg: dict | None) -> list[tuple[str, dict]]:
        entry = self.running[key]
        if msg is not None:
            entry["final"] = entry["final"] or msg.get("event") in FINAL
            return [(key, msg)]
        rc = entry["proc"].wait()
        del self.running[key]
        self.free_slots.append(entry["slot"])
        if entry["final"]:
            return []
        return [(key, {"event": "died", "message": f"worker exited with status {rc}; {self._last_log_line(key)}"})]

    def _last_log_line(self, key: str) -> str:
        try:
            lines = [ln for ln in (self.log_dir / f"{key}.log").read_text(errors="replace").splitlines() if ln.strip()]
        except OSError:
            lines = []
        return f"last log line: {lines[-1].strip()}" if lines else "nothing logged"

    def answer(self, key: str, go: bool) -> None:
        proc = self.running[key]["proc"]
        try:
            proc.stdin.write(b"go\n" if go else b"stop\n")
            proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it has died meanwhile: its reader reports that

    def close(self, signalled: bool = False) -> None:
        """Stop what still runs: SIGTERM (the trial checkpoints), then SIGKILL after a grace period.

        ``signalled``: the workers got the terminal's SIGINT themselves and are checkpointing; only wait.
        """
        for entry in self.running.values():
            if entry["proc"].poll() is None and not signalled:
                entry["proc"].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        for entry in self.running.values():
            try:
                entry["proc"].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                entry["proc"].kill()
                entry["proc"].wait()


def connect_ray(address: str) -> None:
    """``ray.init`` for ``auto`` (a running cluster), ``local`` (start one here) or ``HOST:PORT``;
    an address that does not answer within a few seconds is a CifarlabError."""
    import ray

    if ray.is_initialized():
        return
    if address not in ("auto", "local"):
        host, _, port = address.rpartition(":")
        host = host.removeprefix("ray://") or "127.0.0.1"
        try:
            socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
        except ValueError:
            raise CifarlabError(f"--ray takes auto, local or HOST:PORT, not {address!r}") from None
        except OSError as e:
            raise CifarlabError(f"no Ray cluster answers at {address} ({e.strerror or e})") from None
    kw = {"include_dashboard": False} if address == "local" else {}
    try:
        ray.init(address=None if address == "local" else address, log_to_driver=False, logging_level="ERROR", **kw)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise CifarlabError(f"cannot connect to Ray at {address}: {str(e).splitlines()[0] if str(e) else e}") from None


def _ray_mailbox_class():
    import ray

    @ray.remote(num_cpus=0)
    class Mailbox:
        """Per-epoch rows from the trials to the driver, and its go/stop answers back."""

        def __init__(self):
            self.rows, self.answers = [], {}

        def post(self, key, epoch, row):
            self.rows.append((key, epoch, row))

        def take(self):
            rows, self.rows = self.rows, []
            return rows

        def answer(self, key, epoch, go):
            self.answers[(key, epoch)] = go

        def answer_for(self, key, epoch):
            return self.answers.pop((key, epoch), None)

    return Mailbox


def _ray_trial(job: dict, mailbox) -> dict:
    import ray

    from cifarlab.experiments.trial import run_trial

    def report(row: dict) -> bool:
        ray.get(mailbox.post.remote(job["key"], row["epoch"], row))
        while (go := ray.get(mailbox.answer_for.remote(job["key"], row["epoch"]))) is None:
            time.sleep(0.05)
        return go

    return run_trial(job, report)


class RayPool:
    """One Ray task per trial, ``cpus`` CPUs and ``gpus`` GPUs each; at most ``workers`` at a time."""

    def __init__(self, address: str, workers: int | None, cpus: float = 1, gpus: float = 0):
        import ray

        connect_ray(address)
        if cpus <= 0 or gpus < 0:
            raise CifarlabError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0")
        total = ray.cluster_resources()
        fit = int(total.get("CPU", 1) // cpus)
        if gpus:
            fit = min(fit, int(total.get("GPU", 0) // gpus))
            if fit < 1:
                raise CifarlabError(f"the Ray cluster has {total.get('GPU', 0):g} GPUs; a trial asks {gpus:g}")
        self.slots = workers or max(1, fit)
        self.cpus, self.gpus, self.address = cpus, gpus, address
        self.mailbox = _ray_mailbox_class().remote()
        self.task = ray.remote(max_calls=1, max_retries=0)(_ray_trial).options(num_cpus=cpus, num_gpus=gpus)
        self.running: dict = {}  # ObjectRef -> key
        self._epochs: dict[str, int] = {}  # key -> the epoch its answer is for

    def describe(self) -> dict:
        return {"executor": "ray", "address": self.address, "workers": self.slots, "cpus_per_trial": self.cpus,
                "gpus_per_trial": self.gpus}

    def free(self) -> int:
        return self.slots - len(self.running)

    def busy(self) -> int:
        return len(self.running)

    def start(self, job: dict) -> None:
        job = {**job, "threads": max(1, int(self.cpus))}
        self.running[self.task.remote(job, self.mailbox)] = job["key"]

    def poll(self, timeout: float) -> list[tuple[str, dict]]:
        import ray

        out = [(key, {"event": "epoch", "row": row, "epoch": epoch})
               for key, epoch, row in ray.get(self.mailbox.take.remote())]
        ready, _ = ray.wait(list(self.running), num_returns=1, timeout=timeout if not out else 0)
        for ref in ready:
            key = self.running.pop(ref)
            try:
                out.append((key, ray.get(ref)))
            except ray.exceptions.RayError as e:  # the worker died, or the task raised: retried by drive
                out.append((key, {"event": "died", "message": str(e).strip().splitlines()[-1][:300]}))
        self._epochs.update({key: msg["epoch"] for key, msg in out if msg["event"] == "epoch"})
        return out

    def answer(self, key: str, go: bool) -> None:
        self.mailbox.answer.remote(key, self._epochs[key], go)

    def close(self, signalled: bool = False) -> None:
        import ray

        for ref in self.running:
            ray.cancel(ref, force=True)


def make_pool(workers: int | None, ray: str | None, log_dir: Path, cpus_per_trial: float = 1,
              gpus_per_trial: float = 0, pin: bool = False):
    """The pool a command's ``--workers`` / ``--ray`` / ``--cpus-per-trial`` / ``--gpus-per-trial`` ask for."""
    if ray:
        return RayPool(ray, workers, cpus_per_trial, gpus_per_trial)
    return LocalPool(workers or 1, log_dir, pin=pin)


def drive(pool, next_job: Callable[[], dict | None], on_result: Callable[[dict, dict], None],
          on_epoch: Callable[[dict, dict], bool] | None = None, on_start: Callable[[dict, int], None] | None = None,
          retries: int = 2, say: Callable[[str], None] = print) -> None:
    """Run jobs until ``next_job()`` has none and the pool is idle.

    ``on_epoch(job, row)`` answers go (True) or stop; ``on_result(job, message)`` gets each
    job's final message (see :mod:`cifarlab.experiments.trial`), or ``{"event": "died"}``
    once its retries are spent.
    """
    jobs: dict[str, dict] = {}
    attempts: collections.Counter = collections.Counter()
    again: collections.deque = collections.deque()
    try:
        while True:
            while pool.free():
                job = again.popleft() if again else next_job()
                if job is None:
                    break
                jobs[job["key"]] = job
                attempts[job["key"]] += 1
                if on_start:
                    on_start(job, attempts[job["key"]])
                pool.start(job)
            if not pool.busy():
                pool.close()
                return
            for key, msg in pool.poll(1.0):
                job = jobs[key]
                if msg["event"] == "epoch":
                    pool.answer(key, on_epoch(job, msg["row"]) if on_epoch else True)
                elif msg["event"] == "died" and attempts[key] <= retries:
                    say(f"cifarlab: warning: trial {key} lost its worker ({msg['message']}); "
                        f"retrying ({attempts[key]} of {retries})")
                    again.append(job)
                else:
                    on_result(job, msg)
    except KeyboardInterrupt:
        pool.close(signalled=True)
        raise
    except BaseException:
        pool.close()
        raise


def iterate(jobs: Iterable[dict]) -> Callable[[], dict | None]:
    """``next_job`` for a fixed list of jobs."""
    it = iter(jobs)
    return lambda: next(it, None)
