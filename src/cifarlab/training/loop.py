"""What both fast-recipe loops share, host side only: the epoch/step loop (:func:`run`), the schedule,
the window sizes, FLOP counts, results.

:mod:`cifarlab.training.fast` (TensorFlow's hand-written loop) and :mod:`cifarlab.training.portable`
(every backend) import it; it imports neither, nor any backend. Each of them supplies the steps
(:class:`Trainer`), this module the order they run in.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import keras
import numpy as np

from cifarlab.models.fast import model_flops


def lr_factor(step: int, total: int, end: float) -> float:
    """The learning rate's factor at ``step`` of ``total``: 1 at the start, falling linearly to ``end`` at the end."""
    return 1 + (end - 1) * (step / max(total, 1))


@dataclass
class EvalPoint:
    """Accuracy measured during training; ``train_seconds`` excludes time spent evaluating."""

    step: int
    epoch: float
    train_seconds: float
    accuracy: float


@dataclass
class FastResult:
    history: list[dict] = field(default_factory=list)  # one dict per epoch
    evals: list[EvalPoint] = field(default_factory=list)
    train_seconds: float = 0.0
    steps: int = 0
    images: int = 0


def crop_at(recipe, step: int, total: int) -> int:
    """The window size step ``step`` of ``total`` trains on, by ``recipe.options.crops``, or 0 for whole images."""
    return next((size for size, until in recipe.options.crops if step < round(until * total)), 0)


def train_flops(model, recipe, batch_size: int, stop: int, start: int = 0, total: int | None = None,
                size: int = 32) -> int:
    """Multiply-add FLOPs of steps ``start`` to ``stop - 1`` of a run of ``total`` steps (default: a whole
    run of ``stop``), forward + backward counted as 3 forward passes per image, at the window sizes
    of the progressive resizing."""
    total = stop if total is None else total
    sizes = [crop_at(recipe, s, total) or size for s in range(start, stop)]
    per_image = {s: model_flops(model, s) for s in set(sizes)}
    return 3 * batch_size * sum(per_image[s] for s in sizes)


def epoch_row(epoch: int, loss_sum: float, correct: float, seen: float, predict=None, x_val=None, y_val=None) -> dict:
    """The history row of epoch ``epoch`` (0-based): training loss and accuracy from the epoch's sums, and,
    with ``x_val`` (uint8 ``(N, 32, 32, 3)``) and ``y_val`` (int ``(N,)``), ``val_loss``/``val_accuracy``
    of ``predict(x_val)`` (float32 probabilities ``(N, classes)``)."""
    seen = float(seen)
    row = {"epoch": epoch + 1, "loss": float(loss_sum) / seen, "accuracy": float(correct) / seen}
    if x_val is not None and len(x_val):
        probs = predict(x_val)
        p = np.clip(probs[np.arange(len(y_val)), y_val], 1e-7, 1.0)
        row.update(val_loss=float(-np.log(p).mean()), val_accuracy=float((probs.argmax(1) == y_val).mean()))
    return row


def non_finite_key(row: dict) -> str | None:
    """The first of ``loss``/``val_loss`` in ``row`` that is not a finite number, if any."""
    return next((k for k in ("loss", "val_loss") if k in row and not math.isfinite(row[k])), None)


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Steps of a run of ``epochs`` epochs (fractions allowed, as airbench's 9.9): at least one."""
    return max(1, round(epochs * steps_per_epoch))


class Clock:
    """Training seconds: runs while steps run, stops while the loop checkpoints or evaluates.

    ``wait()`` returns once every queued step has run (a host sync): stopping reads the time after it.
    """

    def __init__(self, wait):
        self.wait, self.seconds, self._since = wait, 0.0, 0.0

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        self.wait()
        self.seconds += time.perf_counter() - self._since

    @contextlib.contextmanager
    def paused(self):
        self.stop()
        yield
        self.start()


class ProgressEvals:
    """Accuracy during training, for time-to-accuracy benchmarks: on ``x`` (uint8 ``(N, 32, 32, 3)``) and
    ``y`` (int ``(N,)``) after every ``every`` steps within an epoch until it reaches ``until``, and at
    every epoch end. ``points`` (``EvalPoint``s, the clock's training seconds, evaluations excluded) become
    ``FastResult.evals``; one object per ``fit``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, every: int | None = None, until: float = 1.0):
        self.x, self.y, self.every, self.until = x, y, every, until
        self.points: list[EvalPoint] = []

    def due(self, step: int) -> bool:
        """Whether to measure within an epoch after ``step`` steps of the run."""
        reached = self.points and self.points[-1].accuracy >= self.until
        return bool(self.every) and not reached and step % self.every == 0

    def measure(self, predict, step: int, epoch: float, seconds: float) -> None:
        """Accuracy of ``predict`` (uint8 images -> float32 probabilities ``(N, classes)``) after ``step``
        steps, ``epoch`` epochs (fractional) and ``seconds`` of training."""
        accuracy = float((predict(self.x).argmax(1) == self.y).mean())
        self.points.append(EvalPoint(step, round(epoch, 3), round(seconds, 3), accuracy))


class Trainer(Protocol):
    """What :func:`run` asks of a fast-recipe trainer (``FastTrainer``, ``PortableTrainer``)."""

    steps_per_epoch: int
    batch_size: int
    n: int  # training images
    rng: np.random.Generator  # draws each epoch's order
    model: keras.Model  # its weights are the checkpoint's model file
    checkpoint_kind: str  # a checkpoint's "trainer": only the kind that wrote one resumes it
    agrees_on_stop: bool  # several workers: the step sums their stop flags, and only that sum stops them

    def train_step(self, idx: np.ndarray, epoch: int, step: int, total: int, stop_asked: bool) -> bool:
        """Queue step ``step`` of ``total`` on the training images at ``idx`` (int32 ``(batch,)``), seen as in
        ``epoch``; True when training stops after it (``stop_asked``, or what the workers agreed)."""

    def sums(self) -> np.ndarray:
        """float64 ``(3,)``: the epoch's summed loss, correct predictions and images, once every queued step has run."""

    def reset_sums(self) -> None: ...

    def predict(self, x: np.ndarray) -> np.ndarray: ...

    def save_checkpoint(self, run_dir, state: dict, previous: dict | None) -> dict:
        """Write a checkpoint into ``run_dir``: the loop's JSON ``state`` (position, history, shuffle
        generator, sums) with this trainer's own (augmentation generator...), the model's weights and
        the arrays beside them (optimizer, weight average); return the whole JSON state."""

    def restore_checkpoint(self, state: dict, arrays: dict[str, np.ndarray]) -> None:
        """The rest of a checkpoint, once the loop has loaded the model's weights: this trainer's state
        from the JSON ``state`` and the ``arrays`` its :meth:`save_checkpoint` wrote."""


def run(trainer: Trainer, total: int, x_val=None, y_val=None, on_epoch=None, run_dir=None, stop=None,
        progress: bool = False, checkpoint_every: int | None = None, probe: ProgressEvals | None = None
        ) -> FastResult:
    """Train ``total`` steps by ``trainer``, epoch after epoch; the loop of both fast-recipe trainers' ``fit``.

    Each epoch shuffles the training images (``trainer.rng``), queues its steps, and waits once,
    at its end, for the loss/accuracy sums of its history row (with ``val_loss``/``val_accuracy`` on
    ``x_val``/``y_val``); ``on_epoch(row)`` follows. The last epoch of a fractional run stops part-way.

    With ``run_dir`` the training state is checkpointed at every epoch end and every ``checkpoint_every``
    steps within one (None: ``checkpoint.DEFAULT_EVERY_STEPS``; 0: epoch ends only), and a checkpoint found
    there resumes at the very next step. ``stop`` (an active ``StopRequest``): a signal ends training after
    the step in progress, with a checkpoint, by ``Interrupted``. A non-finite epoch loss raises
    ``NonFiniteLoss`` and keeps the last good checkpoint. ``progress``: a per-epoch bar of steps
    (reading the loss every step would cost a host sync). ``probe``: accuracy during training.
    """
    from cifarlab.training import checkpoint

    spe, batch = trainer.steps_per_epoch, trainer.batch_size
    res = FastResult()
    start_epoch, start_step = 0, 0
    last_saved = checkpoint.read_state(run_dir) if run_dir is not None else None
    if last_saved is not None:
        start_epoch, start_step = _resume(trainer, run_dir, last_saved)
        res.history = list(last_saved["history"])
    every = checkpoint.DEFAULT_EVERY_STEPS if checkpoint_every is None else checkpoint_every
    every = every if run_dir is not None else 0
    step = start = start_epoch * spe + start_step  # the step drives the schedule
    clock = Clock(trainer.sums)
    stopping = False

    def asked() -> bool:
        return stop is not None and stop.requested

    def save(epochs_done, step_in_epoch, epoch_rng):
        nonlocal last_saved
        # epoch_rng: the shuffle generator before it drew the order of the epoch in progress (or the next one)
        state = {"epoch": epochs_done, "step": step_in_epoch, "exact_step": True, "history": res.history,
                 "trainer": trainer.checkpoint_kind, "steps_per_epoch": spe, "shuffle_rng": epoch_rng,
                 "sums": trainer.sums().tolist(), "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        last_saved = trainer.save_checkpoint(run_dir, state, previous=last_saved)

    for epoch in range(start_epoch, math.ceil(total / spe)):
        epoch_steps = min(spe, total - epoch * spe)
        t_epoch, epoch_clock = time.perf_counter(), clock.seconds
        first = start_step if epoch == start_epoch else 0
        if not first:  # a mid-epoch resume restored the sums of the steps before it
            trainer.reset_sums()
        epoch_rng = trainer.rng.bit_generator.state  # a resume re-draws this epoch's order from it
        order = trainer.rng.permutation(trainer.n).astype(np.int32)
        bar = keras.utils.Progbar(epoch_steps, unit_name="step") if progress else None
        clock.start()
        for s in range(first, epoch_steps):
            stopping = trainer.train_step(order[s * batch:(s + 1) * batch], epoch, step, total, asked())
            step += 1
            if bar is not None:
                bar.update(s + 1)
            if s + 1 == epoch_steps:  # the epoch's end checkpoints, evaluates and stops below
                break
            if stopping:
                if run_dir is not None:
                    save(epoch, s + 1, epoch_rng)
                raise checkpoint.interrupted(stop, last_saved, run_dir)
            if every and (s + 1) % every == 0:
                with clock.paused():
                    save(epoch, s + 1, epoch_rng)
            if probe is not None and probe.due(step):
                with clock.paused():
                    probe.measure(trainer.predict, step, epoch + (s + 1) / spe, clock.seconds)
        clock.stop()
        row = epoch_row(epoch, *trainer.sums(), trainer.predict, x_val, y_val)
        bad = non_finite_key(row)
        if bad:  # before any checkpoint of these weights: the last good one stays on disk
            raise checkpoint.non_finite(row[bad], f"epoch {epoch + 1}", last_saved, run_dir)
        if probe is not None:
            probe.measure(trainer.predict, step, epoch + epoch_steps / spe, clock.seconds)
        row.update(train_seconds=round(clock.seconds - epoch_clock, 3),
                   seconds=round(time.perf_counter() - t_epoch, 3))
        res.history.append(row)
        if run_dir is not None:
            save(epoch + 1, 0, trainer.rng.bit_generator.state)
        if on_epoch:
            on_epoch(row)
        if stopping if trainer.agrees_on_stop else asked():  # several workers stop only as they agreed
            raise checkpoint.interrupted(stop, last_saved, run_dir)
    res.evals = probe.points if probe is not None else []
    res.train_seconds, res.steps, res.images = clock.seconds, step, (step - start) * batch  # a resume starts part-way
    return res


def _resume(trainer: Trainer, run_dir, state: dict) -> tuple[int, int]:
    """Load ``run_dir``'s checkpoint (``state``: its JSON) into ``trainer`` and its model; return where it
    resumes: (epoch, step within it). A checkpoint of another trainer or epoch length is refused."""
    from cifarlab.errors import CifarlabError
    from cifarlab.training import checkpoint

    if state.get("trainer") != trainer.checkpoint_kind or state.get("steps_per_epoch") != trainer.steps_per_epoch:
        raise CifarlabError(f"{checkpoint.path(run_dir)} was not written by this training; "
                            "move it away to start afresh")
    checkpoint.load_weights(run_dir, trainer.model)
    trainer.restore_checkpoint(state, checkpoint.read_arrays(run_dir))
    trainer.rng.bit_generator.state = state["shuffle_rng"]
    checkpoint.resuming_notice(state)
    return state["epoch"], state["step"]
