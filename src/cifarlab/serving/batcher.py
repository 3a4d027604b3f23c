"""Gather concurrent single-image requests into micro-batches for the model.

One model call on 32 images costs little more than a call on one, so the HTTP
service does not call the model per request: each request puts its decoded image
on a queue and awaits a future; one worker task takes what is queued, waits at
most ``max_wait_s`` after the *first* image of a batch arrived for more to come
(so no request waits longer than that for company), runs the model once in a
single worker thread (the event loop keeps accepting requests meanwhile) and
hands each request its row of probabilities.

The queue is bounded twice: at most ``max_queue`` images wait, and an image that
waited longer than ``queue_timeout_s`` is not run at all. Either way the request
gets :class:`Overloaded` (the service answers 503 with ``Retry-After``) instead of
a slower and slower answer.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import numpy as np

# Defaults, in one place. 5 ms is the bound on the extra wait; 64 images
# keep one model call of the small CIFAR models at a few milliseconds on 2 cores.
MAX_BATCH = 64
MAX_WAIT_S = 0.005
# 512 queued images are ~40 ms of the seed model's work on 2 cores. 250 ms in the
# queue (the p99 an accepted request should keep) is the most one may lose there
# before it is turned away: a backstop, since the service's in-flight limit keeps the
# queue short; tighter, and a busy machine's scheduling stalls alone cause 503s.
MAX_QUEUE = 512
QUEUE_TIMEOUT_S = 0.25


class Overloaded(Exception):
    """The queue is full, or the image waited past its deadline; try again in ``retry_after`` s."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class ModelError(Exception):
    """The model raised on this image (alone: the rest of its batch was answered)."""


class MicroBatcher:
    """Run ``fn`` on micro-batches: ``fn((N, 32, 32, 3) uint8) -> (N, K) float32``.

    Use inside one event loop: ``await start()``, then ``await submit(image)``
    from any number of tasks, then ``await stop()`` (which answers what is queued first).
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = MAX_BATCH,
                 max_wait_s: float = MAX_WAIT_S, max_queue: int = MAX_QUEUE,
                 queue_timeout_s: float = QUEUE_TIMEOUT_S):
        if max_batch < 1 or max_wait_s < 0 or max_queue < 1 or queue_timeout_s <= 0:
            raise ValueError("max_batch and max_queue must be >= 1, max_wait_s >= 0 and queue_timeout_s > 0")
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.max_queue, self.queue_timeout_s = max_queue, queue_timeout_s
        self.images = 0  # images predicted so far
        self.batches = 0  # model calls so far
        self.rejected = 0  # images turned away (queue full or past the deadline)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._busy = False

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def start(self) -> None:
        self._queue = asyncio.Queue(self.max_queue)
        # One thread: the model is called from one place at a time, so calls never
        # compete with each other for the cores (TensorFlow parallelises inside a call).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarlab-model")
        self._task = asyncio.create_task(self._run(), name="cifarlab-batcher")

    async def stop(self, drain_s: float = 10.0) -> None:
        """Answer what is queued (for at most ``drain_s`` seconds), then stop the worker."""
        deadline = time.monotonic() + drain_s
        while self._task and not self._task.done() and (self.queued or self._busy) and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor:
            self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        """Probabilities ``(K,)`` float32 for one ``(32, 32, 3)`` uint8 image, and the size of its batch.

        Raises :class:`Overloaded` when the queue is full or the deadline passes,
        :class:`ModelError` when the model fails on this image.
        """
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        fut = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((image, fut, time.monotonic()))
        except asyncio.QueueFull:
            self.rejected += 1
            raise Overloaded(f"the model's queue is full ({self.max_queue} images); retry shortly") from None
        return await fut

    async def _collect(self) -> list:
        q = self._queue
        items = [await q.get()]
        deadline = items[0][2] + self.max_wait_s
        while len(items) < self.max_batch:
            try:
                items.append(q.get_nowait())  # whatever already waits costs no time
                continue
            except asyncio.QueueEmpty:
                pass
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(q.get(), left))
            except (asyncio.TimeoutError, TimeoutError):
                break
        return items

    def _expire(self, items: list) -> list:
        """Fail the images that waited past the deadline (and drop those whose client left); the rest."""
        now, live = time.monotonic(), []
        for it in items:
            if it[1].done():
                continue
            if now - it[2] > self.queue_timeout_s:
                self.rejected += 1
                it[1].set_exception(Overloaded(
                    f"waited {now - it[2]:.2f} s for the model, past the {self.queue_timeout_s:g} s deadline; "
                    "retry shortly"))
            else:
                live.append(it)
        return live

    async def _call(self, x: np.ndarray) -> np.ndarray:
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.fn, x)

    async def _run(self) -> None:
        while True:
            items = self._expire(await self._collect())
            if not items:
                continue
            self._busy = True
            try:
                await self._answer(items)
            except asyncio.CancelledError:
                for it in items:
                    it[1].cancel()
                raise
            finally:
                self._busy = False

    async def _answer(self, items: list) -> None:
        try:
            probs = await self._call(np.stack([it[0] for it in items]))
        except Exception as e:  # noqa: BLE001 - the error belongs to the requests, not the worker
            if len(items) == 1:
                if not items[0][1].done():
                    items[0][1].set_exception(ModelError(f"{type(e).__name__}: {e}"[:300]))
                return
            # One bad input must not fail its neighbours: run each image alone.
            for it in items:
                await self._answer([it])
            return
        self.images += len(items)
        self.batches += 1
        for it, p in zip(items, probs):
            if not it[1].done():
                it[1].set_result((p, len(items)))
