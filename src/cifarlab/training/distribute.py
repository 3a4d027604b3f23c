"""Where training runs: one device, several local devices, or several machines.

``cifarlab train --strategy`` picks a :mod:`tf.distribute` strategy:

- ``auto``: ``mirrored`` when there is more than one GPU (or ``--devices N`` asks for N),
  else TensorFlow's default single-device strategy. Never multi-worker: a ``TF_CONFIG`` left
  in the environment is ignored, with a one-line warning (joining a cluster is an opt-in).
- ``mirrored``: :class:`tf.distribute.MirroredStrategy` over the local GPUs (the first
  ``--devices N`` of them). Without GPUs it splits the CPU into ``--devices N``
  *logical* CPU devices (default 2): no faster, but the same code path as GPUs, for
  trying it out and for tests.
- ``multiworker``: :class:`tf.distribute.MultiWorkerMirroredStrategy` across the
  processes named in ``TF_CONFIG`` (``cifarlab launch`` writes one per local worker).
- ``dataparallel`` (JAX backend): :class:`keras.distribution.DataParallel` over the local
  devices (the first ``--devices N``), each step's batch split along its first axis. On a
  CPU, ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` gives N devices to try it.

``mirrored`` and ``multiworker`` are TensorFlow's (``--backend tensorflow``); on JAX and
PyTorch ``auto`` is one device.

Batch size and learning rate: ``--batch-size`` (and the recipe's ``batch_size``) is the
**global** batch, the images that go into one optimizer step summed over every replica
of every worker; each replica gets ``batch / replicas``. The learning rate belongs to
that global batch, so it is used unchanged. The same command therefore trains the same
way on 1 device, 2 GPUs or 4 machines; to use bigger hardware for bigger steps, raise
``--batch-size`` and ``--lr`` together yourself (docs/scaling.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from dataclasses import dataclass

from cifarlab.errors import CifarlabError

CHOICES = ("auto", "mirrored", "multiworker", "dataparallel")
# How long one collective operation (an all-reduce of gradients) may wait for the other
# workers before it fails. Generous, because the first step also compiles the model on every
# worker; bounded, so that a worker that died stops the others with an error instead of a hang.
COLLECTIVE_TIMEOUT_S = float(os.environ.get("CIFARLAB_COLLECTIVE_TIMEOUT", "120"))
DEFAULT_CPU_DEVICES = 2  # logical CPU devices for --strategy mirrored without GPUs


@dataclass
class Placement:
    """The strategy in use and who this process is within it."""

    strategy: object  # tf.distribute.Strategy, keras.distribution.DataParallel, or None (one device, no TF)
    kind: str  # "default" | "mirrored" | "multiworker" | "dataparallel"
    replicas: int  # replicas in sync, over all workers
    workers: int = 1
    worker_index: int = 0

    @property
    def is_chief(self) -> bool:
        """Worker 0 writes the run directory; the others only train."""
        return self.worker_index == 0

    def describe(self) -> str:
        if self.kind == "default":
            return "one device"
        if self.kind == "mirrored":
            return f"{self.replicas} local devices (MirroredStrategy)"
        if self.kind == "dataparallel":
            return f"{self.replicas} local devices (keras.distribution.DataParallel)"
        return f"worker {self.worker_index} of {self.workers}, {self.replicas} replicas (MultiWorkerMirroredStrategy)"

    def scope(self):
        return contextlib.nullcontext() if self.strategy is None else self.strategy.scope()

    def prepare(self, model, x_sample, y_sample) -> None:
        """Build a compiled model's training state before ``fit`` (needed for multi-worker only).

        Keras 3.15's ``fit`` builds a model under a strategy from one batch averaged over
        all replicas, which fails across workers (keras-team/keras#20585); a local sample
        batch gives the same shapes.
        """
        if self.kind != "multiworker":
            return
        import tensorflow as tf

        def build_locally(iterator=None, data_batch=None):
            with self.strategy.scope():
                model._symbolic_build(data_batch=(tf.constant(x_sample), tf.constant(y_sample)))

        model._maybe_symbolic_build = build_locally  # this model instance only

    def fix_replicas(self) -> "Placement":
        self.replicas = int(self.strategy.num_replicas_in_sync)
        return self

    def check_batch(self, batch_size: int) -> None:
        if batch_size % self.replicas:
            raise CifarlabError(f"the global batch size {batch_size} does not split evenly over {self.replicas} "
                                f"replicas; choose a --batch-size that is a multiple of {self.replicas}")

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag, true when it is true on any worker.

        Under multi-worker training this is a collective (a tiny all-reduce), so every
        worker must call it at the same point; then all of them stop at the same step.
        """
        if self.kind != "multiworker":
            return tuple(flags)
        import tensorflow as tf

        if not hasattr(self, "_any"):
            @tf.function
            def _any(v):
                per_replica = self.strategy.run(lambda: tf.identity(v))
                return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            self._any = _any
        total = self._any(tf.constant([1.0 if f else 0.0 for f in flags])).numpy()
        return tuple(bool(t > 0) for t in total)


def tf_config() -> dict | None:
    """``TF_CONFIG`` parsed, or None when unset; a clear error when malformed."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
        workers = cfg["cluster"]["worker"]
        task = cfg["task"]
        if not isinstance(workers, list) or not workers or task["type"] not in ("worker", "chief"):
            raise ValueError("needs cluster.worker (a list of host:port) and task.type 'worker'")
        if task["type"] == "worker" and not 0 <= int(task["index"]) < len(workers):
            raise ValueError(f"task.index {task['index']} is not one of the {len(workers)} workers")
        return cfg
    except (ValueError, KeyError, TypeError) as e:
        raise CifarlabError(f"TF_CONFIG is not a valid cluster description ({e})") from None


def setup(kind: str = "auto", devices: int | None = None) -> Placement:
    """Create the strategy. Call before any other TensorFlow work: logical devices and
    multi-worker collectives can only be configured before TensorFlow initialises."""
    if kind not in CHOICES:
        raise CifarlabError(f"--strategy must be one of {', '.join(CHOICES)}, not {kind!r}")
    if devices is not None and (not isinstance(devices, int) or devices < 1):
        raise CifarlabError(f"--devices must be a positive whole number, not {devices!r}")
    from cifarlab.backend import current

    backend = current()
    if backend != "tensorflow" or kind == "dataparallel":
        return _setup_keras_distribution(backend, kind, devices)
    import tensorflow as tf

    if kind == "auto":
        if os.environ.get("TF_CONFIG"):
            print("cifarlab: warning: TF_CONFIG is set but ignored: this run trains on this machine alone "
                  "(--strategy multiworker joins the cluster it names)", file=sys.stderr, flush=True)
        gpus = tf.config.list_physical_devices("GPU")
        kind = "mirrored" if len(gpus) > 1 or (devices or 1) > 1 else "default"
    if kind == "default":
        return Placement(tf.distribute.get_strategy(), "default", 1)
    if kind == "mirrored":
        return Placement(tf.distribute.MirroredStrategy(_local_devices(devices)), "mirrored", 0).fix_replicas()
    cluster = tf_config()
    if cluster is None:
        raise CifarlabError("--strategy multiworker needs TF_CONFIG describing the cluster "
                            "(or start the workers with `cifarlab launch --workers N -- train ...`)")
    if devices is not None:  # use only the first N GPUs of this worker
        gpus = tf.config.list_physical_devices("GPU")
        if devices > len(gpus):
            raise CifarlabError(f"--devices {devices} with --strategy multiworker picks GPUs per worker, and this "
                                f"worker has {len(gpus)}; without GPUs each worker trains on its CPU")
        tf.config.set_visible_devices(gpus[:devices], "GPU")
    _patch_keras_for_multiworker()
    options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=COLLECTIVE_TIMEOUT_S)
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        raise CifarlabError(f"cannot join the cluster in TF_CONFIG: {str(e).splitlines()[0]}") from None
    task = cluster["task"]
    index = int(task.get("index", 0)) + (1 if "chief" in cluster["cluster"] and task["type"] == "worker" else 0)
    workers = len(cluster["cluster"]["worker"]) + len(cluster["cluster"].get("chief", []))
    p = Placement(strategy, "multiworker", 0, workers=workers, worker_index=index)
    return p.fix_replicas()


def _setup_keras_distribution(backend: str, kind: str, devices: int | None) -> Placement:
    """Placement off TensorFlow: one device, or JAX's data parallelism (``dataparallel``)."""
    if kind in ("mirrored", "multiworker"):
        raise CifarlabError(f"--strategy {kind} is TensorFlow's tf.distribute (--backend tensorflow); "
                            f"on {backend} use --strategy dataparallel (JAX) or one device")
    if kind == "auto" and (devices or 1) == 1:
        return Placement(None, "default", 1)
    if backend != "jax":
        raise CifarlabError(f"--strategy dataparallel and --devices need the JAX backend, not {backend}")
    import keras

    available = keras.distribution.list_devices()
    n = devices or len(available)
    if n > len(available):
        raise CifarlabError(f"--devices {n}: JAX sees only {len(available)} devices "
                            "(on a CPU: XLA_FLAGS=--xla_force_host_platform_device_count=N)")
    if n == 1:
        return Placement(None, "default", 1)
    return Placement(keras.distribution.DataParallel(devices=available[:n]), "dataparallel", n)


def _patch_keras_for_multiworker() -> None:
    """Work around Keras 3.15 averaging scalar metrics across workers along axis 0.

    ``keras.src.backend.tensorflow.trainer.reduce_per_replica`` calls
    ``strategy.reduce("MEAN", v, axis=0)`` on each metric under
    MultiWorkerMirroredStrategy; metrics are scalars, so every ``fit`` fails
    (keras-team/keras#20585). Averaging over replicas (``axis=None``) is what is meant.
    Applied only when a multi-worker strategy is set up.
    """
    import tensorflow as tf
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original = tf_trainer.reduce_per_replica
    if getattr(original, "_cifarlab_patched", False):
        return

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and tf_trainer._collective_all_reduce_multi_worker(strategy):
            return tf.nest.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return original(values, strategy, reduction)

    reduce_per_replica._cifarlab_patched = True
    tf_trainer.reduce_per_replica = reduce_per_replica


def _local_devices(devices: int | None) -> list[str]:
    """Device names for MirroredStrategy; splits the CPU into logical devices without GPUs."""
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        n = devices or len(gpus)
        if n > len(gpus):
            raise CifarlabError(f"--devices {n}: this machine has only {len(gpus)} GPUs")
        return [f"/gpu:{i}" for i in range(n)]
    n = devices or DEFAULT_CPU_DEVICES
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError:
        # TensorFlow is already initialised (a second run in one Python process): keep what exists.
        have = len(tf.config.list_logical_devices("CPU"))
        if have < n:
            raise CifarlabError(f"cannot split the CPU into {n} devices after TensorFlow has started; "
                                "run training in a fresh process") from None
    return [f"/cpu:{i}" for i in range(n)]


def local_model_for_eval(model, placement: Placement, rebuild):
    """The trained model in a form that predicts on this process alone.

    Under multi-worker training ``predict`` would shard the test set across workers;
    the chief evaluates on its own, so it copies the weights into a plain model built
    outside the strategy by ``rebuild()``. Other strategies return ``model`` itself.
    """
    if placement.kind != "multiworker":
        return model
    local = rebuild()
    local.set_weights(model.get_weights())
    return local


def raise_if_peer_lost(error: BaseException, placement: Placement, out) -> None:
    """Turn TensorFlow's report of a lost or timed-out worker into one clear line."""
    if placement.kind != "multiworker":
        return
    import tensorflow as tf

    lost = (tf.errors.DeadlineExceededError, tf.errors.UnavailableError, tf.errors.CancelledError,
            tf.errors.AbortedError, tf.errors.InternalError)
    if isinstance(error, lost):
        lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()
                 and not ln.strip().startswith(("Graph execution error", "Detected at node", "File ", "[["))]
        first = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", (lines or [""])[0])[:200]
        raise CifarlabError(f"lost contact with another worker ({type(error).__name__}: {first}); stopping. "
                            f"The last checkpoint is in {out}/checkpoint: start all workers again with the "
                            "same command to resume") from None
