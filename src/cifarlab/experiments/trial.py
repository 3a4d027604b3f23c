"""One trial: an ordinary ``cifarlab train`` run, wherever it executes.

A job is plain JSON data: ``{"key": "seed-3", "config": {TrainConfig fields}, "threads": 1}``.
:func:`run_trial` trains it through the public :func:`cifarlab.train` API, asks
``report(row)`` after every epoch whether to go on (tuning prunes this way), and
returns one message, a dict with ``event``:

- ``"done"``: ``run_dir`` and the scalar ``metrics`` of ``metrics.json``
- ``"stopped"``: ``report`` said stop (a pruned trial); the run directory keeps its checkpoint
- ``"error"``: a user error (``CifarlabError``), with its one-line ``message``; not retried
- ``"interrupted"``: the trial was stopped by SIGINT/SIGTERM after a checkpoint

Anything else (a crash, a killed process) is the executor's to notice and retry.
"""

from __future__ import annotations

import os
from typing import Callable

from cifarlab.errors import CifarlabError


class _Stop(Exception):
    """Raised from the epoch hook when the driver says stop."""


def scalars(metrics: dict) -> dict:
    """The plain numbers of a ``metrics.json`` (accuracy, loss, seconds; not the per-class tables)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def set_threads(threads: int | None) -> None:
    """Give TensorFlow ``threads`` intra-op threads (and OpenMP as many); before any TensorFlow op runs."""
    if not threads:
        return
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["TF_NUM_INTRAOP_THREADS"] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = str(min(2, threads))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(min(2, threads))


def run_trial(job: dict, report: Callable[[dict], bool] | None = None) -> dict:
    from cifarlab._tf import import_quietly
    from cifarlab.training.config import TrainConfig
    from cifarlab.training.signals import Interrupted

    import_quietly()
    set_threads(job.get("threads"))
    from cifarlab.training.train import train

    def on_epoch(row: dict) -> None:
        if report is not None and not report(row):
            raise _Stop

    try:
        run = train(TrainConfig(**job["config"]), on_epoch=on_epoch)
    except _Stop:
        return {"event": "stopped"}
    except Interrupted as e:
        return {"event": "interrupted", "message": str(e)}
    except CifarlabError as e:
        return {"event": "error", "message": str(e)}
    return {"event": "done", "run_dir": str(run.run_dir), "metrics": scalars(run.metrics)}
