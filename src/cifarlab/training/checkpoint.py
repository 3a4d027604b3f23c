"""Checkpoints that survive ``kill -9``, Ctrl-C, a full disk and a dead worker.

One file, ``RUN_DIR/checkpoint/latest.weights.h5``, holds everything needed to go on:

- the model's weights and the optimizer's variables, including its step counter
  (``iterations``), which is the position in any learning-rate schedule
  (Keras' own ``.weights.h5`` format, as ``model.save_weights`` writes it);
- a JSON attribute ``cifarlab_state`` on the file's root: epochs completed, step within
  the epoch in progress, the history rows of every completed epoch (with seconds), the
  early-stopping counters, and the numpy, Python and Keras random-generator states.

It is written at the end of every epoch and every ``every_steps`` steps within one, to a
temporary file that is renamed over the previous checkpoint only when complete
(``cifarlab.fileio.atomic_path``). A crash, a kill or a full disk at any moment leaves
the previous checkpoint whole. What ``keras.callbacks.BackupAndRestore`` (Keras 3.15)
does differently: it overwrites ``latest.weights.h5`` in place and writes the epoch
number to a second file, so a kill between the two leaves them inconsistent, and it
keeps no history, random state or early-stopping counters.

Resuming: re-running the same ``cifarlab train`` command with the same ``--out`` finds
the checkpoint and continues. After an epoch-end checkpoint it continues with the next
epoch. After a mid-epoch checkpoint (every N steps, or on a signal) it keeps the weights
and optimizer state reached mid-epoch and runs that epoch again from its first batch:
Keras' ``fit`` cannot start an epoch part-way, so those batches are seen once more.
Either way the run ends after the requested number of epochs with one history row each.

The fast loop (``training.fast``, recipes ``fast`` and ``quick``) writes the same file through
:func:`write`: the model's weights (batch-norm statistics included), its hand-written optimizer's
momentum buffers as extra arrays, and a state with the epoch and step (the step counter drives
the learning-rate schedule), the history, and its shuffle and augmentation generators. It
checkpoints at every epoch end, every ``every_steps`` steps and on a signal, and since it owns its
loop a mid-epoch checkpoint resumes at the very next step, with the same batches as an unbroken run.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.fileio import atomic_path, fresh_dir, write_json
from cifarlab.training.saved_state import FILE, FOLDER, STATE_ATTR, path, read_state, where  # noqa: F401
from cifarlab.training.signals import Interrupted, StopRequest

# Written when a run claims its folder: only a folder holding it is ever resumed (a Hugging Face
# model folder has a config.json too). ``format`` changes when run directories change incompatibly.
MARKER = ".cifarlab-run"
MARKER_FORMAT = 1
# Held (flock) for the run's lifetime; holds the pid of the run that holds it.
LOCK = ".cifarlab-run.lock"
# What a run writes before its first checkpoint: all a failure then removes, and only if this attempt made it.
EARLY_FILES = ("config.json", "tensorboard", FOLDER, MARKER, LOCK)
ARRAYS_GROUP = "cifarlab_arrays"  # extra state arrays (the fast loop's momentum buffers)
# Default for `--checkpoint-every`: on the full CIFAR-10 training set with batch 32 an epoch
# is 1,407 steps, so a crash loses at most about a third of an epoch. A checkpoint of the
# seed model with Adam state is 2.7 MB and takes milliseconds.
DEFAULT_EVERY_STEPS = 500
# Request fields that change what a run computes: resuming with any of them different
# would silently mix two trainings, so it is refused. (--strategy, --devices, --quiet and
# --checkpoint-every may change between attempts.)
MUST_MATCH = ("model", "recipe", "data", "dataset", "epochs", "batch_size", "lr", "precision", "seed",
              "deterministic", "limit", "validate_on", "val_fraction", "coarse", "overrides")


class NonFiniteLoss(CifarlabError):
    """The loss became NaN or infinite; training stopped without saving the bad weights."""


def check_every(steps: int | None) -> None:
    if steps is not None and (not isinstance(steps, int) or steps < 0):
        raise CifarlabError(f"--checkpoint-every must be a whole number of steps (0: epochs only), not {steps!r}")


@dataclass
class Claim:
    """A run directory claimed by :func:`claim`: where it is and what this attempt may remove.

    ``resuming``: it holds an earlier attempt of the same run. ``created``: this attempt made
    the folder. ``existed``: the names in it before this attempt. Call :meth:`release` when the
    run ends (the lock also goes when the process dies, ``kill -9`` included).
    """

    out: Path
    resuming: bool = False
    created: bool = False
    existed: frozenset = frozenset()
    lock_fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # closing the file releases its flock
            self.lock_fd = None


def claim(out: Path, request: dict, chief: bool = True, fresh: bool = False) -> Claim:
    """Make ``out`` ready for a run and lock it for the run's lifetime.

    ``fresh``: ``out`` is a default name; a new folder is made beside it if it exists
    (``out-2``, ...). Otherwise a missing or empty ``out`` is a new run; a folder with this
    program's marker (:data:`MARKER`) is an interrupted run, resumed if it was started with the
    same settings; a completed run (``metrics.json``), a folder in use by another run and any
    other non-empty folder are refused, before anything is written. Only the chief checks and creates.
    """
    out = Path(out)
    if not chief:
        # Other workers neither check nor create: the chief does, and is writing there right now.
        return Claim(out)
    if fresh:
        out = fresh_dir(out)
        return _start(Claim(out, created=True))
    if (out / "metrics.json").exists():
        raise CifarlabError(f"{out} holds a completed run; choose another --out")
    if out.exists() and not out.is_dir():
        raise CifarlabError(f"{out} already exists and is not a folder; choose another --out")
    try:
        names = frozenset(os.listdir(out)) if out.is_dir() else frozenset()
    except OSError as e:
        raise CifarlabError(f"cannot read run directory {out}: {e.strerror or e}") from None
    if names <= {LOCK}:  # new, empty, or left by an attempt killed before it wrote its marker
        created = not out.exists()
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CifarlabError(f"cannot write run directory {out}: {e.strerror or e}") from None
        return _start(Claim(out, created=created, existed=names))
    if MARKER not in names:
        where = " beside its config.json" if "config.json" in names else " in it"
        raise CifarlabError(f"{out} already exists and was not made by cifarlab train (no {MARKER} marker{where}); "
                            "choose another --out")
    _read_marker(out)
    run = Claim(out, resuming=True, existed=names)
    run.lock_fd = _lock(out)
    try:  # checked again under the lock: another run may have finished or written it meanwhile
        if (out / "metrics.json").exists():
            raise CifarlabError(f"{out} holds a completed run; choose another --out")
        _check_same_settings(out, request)
        read_state(out)  # a damaged checkpoint fails now, before this attempt writes anything
    except BaseException:
        run.release()
        raise
    return run


def _start(run: Claim) -> Claim:
    """Lock a new, empty run directory and mark it as this program's."""
    run.lock_fd = _lock(run.out)
    try:
        write_json(run.out / MARKER, {"format": MARKER_FORMAT, "program": "cifarlab train"})
    except BaseException:
        after_failure(run)
        run.release()
        raise
    return run


def _read_marker(out: Path) -> None:
    try:
        marker = json.loads((out / MARKER).read_text())
        version = marker["format"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CifarlabError(f"{out / MARKER} is unreadable ({type(e).__name__}); choose another --out") from None
    if version != MARKER_FORMAT:
        raise CifarlabError(f"{out / MARKER}: run directory format {version!r}, this cifarlab reads format "
                            f"{MARKER_FORMAT}; choose another --out")


def _check_same_settings(out: Path, request: dict) -> None:
    if not (out / "config.json").is_file():
        return  # stopped before it wrote its config: nothing to compare
    try:
        before = json.loads((out / "config.json").read_text()).get("request", {})
    except (OSError, ValueError, AttributeError) as e:
        raise CifarlabError(f"{out}/config.json is unreadable ({e}); choose another --out") from None
    diff = [f"--{k.replace('_', '-')} {before.get(k)!r} then, {request.get(k)!r} now"
            for k in MUST_MATCH if k in before and before.get(k) != request.get(k)]
    if diff:
        raise CifarlabError(f"{out} holds an interrupted run started with other settings ({'; '.join(diff)}); "
                            "resume it with the same settings or choose another --out")


def _lock(out: Path) -> int:
    """An exclusive flock on ``out/LOCK`` (holding this pid); refused with the holder's pid when taken."""
    lock = out / LOCK
    for _ in range(10):
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise CifarlabError(f"cannot write run directory {out}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise CifarlabError(f"cannot lock run directory {out}: {e.strerror or e}") from None
            try:
                pid = lock.read_text().strip() or "unknown"
            except OSError:
                pid = "unknown"
            raise CifarlabError(f"{out} is in use by another cifarlab run (pid {pid}); wait for it to end "
                                "or choose another --out") from None
        try:  # the holder may have removed the file as we opened it: then lock the new one
            if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise CifarlabError(f"cannot lock run directory {out}: its lock file keeps changing")


def after_failure(run: Claim) -> None:
    """On an error: keep a directory that holds a checkpoint (the same command resumes it).
    Without one, remove what this attempt made: the whole folder if it made the folder, else only
    the files of :data:`EARLY_FILES` that were not there before; never anything else."""
    if run.lock_fd is None and not run.created or path(run.out).exists():
        return
    if run.created:
        shutil.rmtree(run.out, ignore_errors=True)
        return
    for name in EARLY_FILES:
        p = run.out / name
        if name in run.existed or not (p.exists() or p.is_symlink()):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def finish(out: Path) -> None:
    """After ``metrics.json``: the run is complete and its checkpoint is no longer needed."""
    shutil.rmtree(out / FOLDER, ignore_errors=True)


def write(run_dir: str | Path, model, state: dict, arrays: dict[str, np.ndarray] | None = None,
          previous: dict | None = None) -> None:
    """Atomically replace the checkpoint of ``run_dir``: ``model``'s weights, ``state`` (JSON) and
    ``arrays`` (extra named float arrays, e.g. a hand-written optimizer's buffers, see :func:`read_arrays`).

    ``previous`` is the state of the checkpoint on disk, named in the error should the write fail.
    """
    target = path(run_dir)
    data = _checkpoint_bytes(model, state, arrays)  # in memory: HDF5 itself never meets a full disk
    try:
        with atomic_path(target, suffix=".weights.h5") as tmp:
            _write_bytes(data, tmp)
    except (CifarlabError, OSError) as e:
        detail = str(e).removeprefix(f"cannot write {target}: ")
        kept = (f"the previous checkpoint ({where(previous)}) is intact"
                if previous else "no earlier checkpoint exists")
        raise CifarlabError(f"cannot write checkpoint {target}: {detail}; {kept}. Free space or fix the "
                            f"folder, then run the same command with --out {run_dir} to resume") from None


def read_arrays(run_dir: str | Path) -> dict[str, np.ndarray]:
    """The extra arrays :func:`write` stored in the checkpoint of ``run_dir``, by name."""
    import h5py

    with h5py.File(path(run_dir), "r") as f:
        group = f.get(ARRAYS_GROUP)
        return {} if group is None else {name: np.asarray(group[name]) for name in group}


def load_weights(run_dir: str | Path, model) -> None:
    """Load the checkpoint's weights into ``model``; a clear error when they do not fit it."""
    try:
        model.load_weights(path(run_dir))
    except (OSError, ValueError) as e:
        raise CifarlabError(f"{path(run_dir)} does not fit this model ({str(e).splitlines()[0]}); "
                            "move it away to start afresh") from None


def resuming_notice(state: dict) -> None:
    # Printed even with --quiet: a user must know this run did not start afresh.
    again = (" (that epoch starts over with the weights it had reached)"
             if state["step"] and not state.get("exact_step") else "")
    print(f"resuming from the checkpoint {where(state)}{again}", file=sys.stderr, flush=True)


def non_finite(loss: float, at: str, last_saved: dict | None, run_dir: str | Path) -> NonFiniteLoss:
    """The error for a NaN/inf loss at ``at`` (words), naming the last good checkpoint (kept as it is)."""
    if last_saved:
        kept = f"the last good checkpoint ({where(last_saved)}) is kept in {path(run_dir).parent}"
    else:
        kept = "no checkpoint had been written yet"
    return NonFiniteLoss(f"the loss became {loss} at {at}; training stopped ({kept}). "
                         "The learning rate is probably too high: try a lower --lr")


def interrupted(stop: StopRequest, last_saved: dict | None, run_dir: str | Path) -> Interrupted:
    """The exception for a stop on a signal, once the checkpoint ``last_saved`` is on disk."""
    name = stop.name or "a signal on another worker"
    return Interrupted(f"stopped by {name} at {where(last_saved)}; checkpoint saved in "
                       f"{path(run_dir).parent}. To resume, run the same command with --out {run_dir}",
                       stop.signum or 15)


class _NamedBuffer(io.BytesIO):
    """An in-memory file that Keras' ``save_weights`` accepts (it checks that the name ends in .weights.h5)."""

    def __str__(self) -> str:
        return "checkpoint.weights.h5"


def _checkpoint_bytes(model, state: dict, arrays: dict[str, np.ndarray] | None) -> bytes:
    """The whole checkpoint file: ``model``'s weights in Keras' .weights.h5 format plus ``state`` and ``arrays``.

    Built in memory because HDF5 writing straight to a full disk fails messily: a multi-line
    error, and at exit a crash (SIGSEGV) when it retries flushing the file it could not close.
    """
    import h5py

    buf = _NamedBuffer()
    model.save_weights(buf)  # Keras writes to any file object whose name ends in .weights.h5
    with h5py.File(buf, "a") as f:
        f.attrs[STATE_ATTR] = json.dumps(state)
        for name, value in (arrays or {}).items():
            f.create_dataset(f"{ARRAYS_GROUP}/{name}", data=value)
    return buf.getvalue()


def _write_bytes(data: bytes, target: Path) -> None:
    # Separate function so tests can inject a write failure (a full disk) here.
    with open(target, "wb") as f:
        f.write(data)


def _rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state = {"numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
             "python": [version, list(internal), gauss]}
    try:
        from keras.src.random.seed_generator import global_seed_generator

        state["keras"] = np.asarray(keras.ops.convert_to_numpy(global_seed_generator().state)).tolist()
    except Exception:  # pragma: no cover - private Keras API moved; the other generators still resume
        pass
    return state


def _set_rng_state(state: dict) -> None:
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "keras" in state:
        try:
            from keras.src.random.seed_generator import global_seed_generator

            global_seed_generator().state.assign(np.asarray(state["keras"], dtype="uint32"))
        except Exception:  # pragma: no cover
            pass


class Checkpointer(keras.callbacks.Callback):
    """Saves and restores the whole training state; stops on a signal or a non-finite loss.

    ``siblings`` is the list of the other callbacks of the same ``fit`` (for the
    early-stopping counters). Put this callback last, so that it sees their decisions.
    ``placement`` (``distribute.Placement``) says whether this process writes (the chief)
    and lets multi-worker processes agree on when to stop.
    """

    def __init__(self, run_dir: Path, stop: StopRequest, placement=None, every_steps: int | None = None,
                 siblings: list | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.stop = stop
        self.placement = placement
        self.every_steps = DEFAULT_EVERY_STEPS if every_steps is None else every_steps
        self.siblings = siblings if siblings is not None else []
        self.rows: list[dict] = []  # history, one dict per completed epoch
        self.epochs_done = 0
        self.epochs_run_here = 0
        self.step = 0  # steps done in the epoch in progress
        self.resumed_from: dict | None = None
        self.last_saved: dict | None = None
        self._stopped_early = False

    # -- helpers -----------------------------------------------------------------------------
    @property
    def writes(self) -> bool:
        return self.placement is None or self.placement.is_chief

    def _early_stopping(self):
        return next((c for c in self.siblings if isinstance(c, keras.callbacks.EarlyStopping)), None)

    def _where(self, state: dict | None) -> str:
        return where(state)

    def _state(self) -> dict:
        es = self._early_stopping()
        return {
            "epoch": self.epochs_done, "step": self.step, "stopped_early": self._stopped_early,
            "optimizer_iterations": int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)),
            "history": self.rows, "rng": _rng_state(), "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "early_stopping": None if es is None else {
                "wait": int(es.wait), "best": None if es.best is None else float(es.best),
                "best_epoch": int(es.best_epoch), "stopped_epoch": int(es.stopped_epoch)},
        }

    def save(self) -> None:
        state = self._state()
        if self.writes:  # the chief writes this same state; the other workers only keep track
            write(self.run_dir, self.model, state, previous=self.last_saved)
        self.last_saved = state

    def initial_epoch(self, epochs: int) -> int:
        """``fit(initial_epoch=...)`` for a run of ``epochs``: 0 afresh, else the epoch after the checkpoint's
        last (``epochs`` if early stopping had ended it: nothing more to train)."""
        state = read_state(self.run_dir)
        if state is None:
            return 0
        return epochs if state.get("stopped_early") else state["epoch"]

    # -- Keras hooks -------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        state = read_state(self.run_dir)
        if state is None:
            return
        model = self.model
        scope = self.placement.scope() if self.placement else contextlib.nullcontext()
        with scope:
            if model.optimizer is not None and not model.optimizer.built:
                model.optimizer.build(model.trainable_variables)
            load_weights(self.run_dir, model)
        try:
            _set_rng_state(state["rng"])
        except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
            raise CifarlabError(f"{path(self.run_dir)}: unreadable checkpoint (its random-generator state: "
                                f"{type(e).__name__}); move it away to start the run afresh") from None
        self.rows = list(state["history"])
        self.epochs_done = state["epoch"]
        self._stopped_early = bool(state.get("stopped_early"))
        es, saved_es = self._early_stopping(), state.get("early_stopping")
        if es is not None and saved_es:
            es.wait, es.best_epoch, es.stopped_epoch = saved_es["wait"], saved_es["best_epoch"], saved_es["stopped_epoch"]
            es.best = saved_es["best"]
        self.resumed_from = self.last_saved = state
        if self.writes:
            resuming_notice(state)

    def on_epoch_begin(self, epoch, logs=None):
        self.step = 0
        self._t0 = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.step = batch + 1
        loss = float((logs or {}).get("loss", 0.0))
        bad, stop = self._agree(not math.isfinite(loss), self.stop.requested)
        if bad:
            self._non_finite(loss, f"epoch {self.epochs_done + 1}, step {self.step}")
        if stop:
            self.save()
            self._interrupted()
        if self.every_steps and self.step % self.every_steps == 0:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        bad = [k for k in ("loss", "val_loss") if k in logs and not math.isfinite(logs[k])]
        if self._agree(bool(bad), False)[0]:
            self._non_finite(logs.get(bad[0], float("nan")) if bad else float("nan"), f"epoch {epoch + 1}")
        self.rows.append({"epoch": epoch + 1, **logs, "seconds": round(time.perf_counter() - self._t0, 3)})
        self.epochs_done = epoch + 1
        self.epochs_run_here += 1
        self.step = 0
        self._stopped_early = bool(self.model.stop_training)
        self.save()
        if self._agree(False, self.stop.requested)[1]:
            self._interrupted()

    # -- stopping ----------------------------------------------------------------------------
    def _agree(self, bad: bool, stop: bool) -> tuple[bool, bool]:
        if self.placement is None or self.placement.kind != "multiworker":
            return bad, stop
        return self.placement.agree(bad, stop)

    def _non_finite(self, loss: float, at: str):
        raise non_finite(loss, at, self.last_saved, self.run_dir)

    def _interrupted(self):
        raise interrupted(self.stop, self.last_saved, self.run_dir)

    def history_frame(self):
        """Every completed epoch, resumed ones included: epoch, loss, accuracy, val_loss, val_accuracy, seconds."""
        import pandas as pd

        return pd.DataFrame(self.rows)
