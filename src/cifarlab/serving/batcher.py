"""Gather concurrent single-image requests into micro-batches for the model.

One model call on 32 images costs little more than a call on one, so the HTTP
service does not call the model per request: each request puts its decoded image
on a queue and awaits a future; one worker task takes what is queued, waits at
most ``max_wait_s`` after the *first* image of a batch arrived for more to come
(so no request waits longer than that for company), runs the model once in a
single worker thread (the event loop keeps accepting requests meanwhile) and
hands each request its row of probabilities.
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


class MicroBatcher:
    """Run ``fn`` on micro-batches: ``fn((N, 32, 32, 3) uint8) -> (N, K) float32``.

    Use inside one event loop: ``await start()``, then ``await submit(image)``
    from any number of tasks, then ``await stop()``.
    """

    def __init__(self, fn: Callable[[np.ndarray], np.ndarray], max_batch: int = MAX_BATCH,
                 max_wait_s: float = MAX_WAIT_S):
        if max_batch < 1 or max_wait_s < 0:
            raise ValueError("max_batch must be >= 1 and max_wait_s >= 0")
        self.fn, self.max_batch, self.max_wait_s = fn, max_batch, max_wait_s
        self.images = 0  # images predicted so far
        self.batches = 0  # model calls so far
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        # One thread: the model is called from one place at a time, so calls never
        # compete with each other for the cores (TensorFlow parallelises inside a call).
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cifarlab-model")
        self._task = asyncio.create_task(self._run(), name="cifarlab-batcher")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        if self._executor:
            self._executor.shutdown(wait=True)

    async def submit(self, image: np.ndarray) -> tuple[np.ndarray, int]:
        """Probabilities ``(K,)`` float32 for one ``(32, 32, 3)`` uint8 image, and the size of its batch."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        fut = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, fut, time.monotonic()))
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            items = [it for it in items if not it[1].done()]  # a client that went away
            if not items:
                continue
            try:
                x = np.stack([it[0] for it in items])
                probs = await loop.run_in_executor(self._executor, self.fn, x)
            except asyncio.CancelledError:
                for it in items:
                    it[1].cancel()
                raise
            except Exception as e:  # noqa: BLE001 - the error belongs to the requests, not the worker
                for it in items:
                    if not it[1].done():
                        it[1].set_exception(e)
                continue
            self.images += len(items)
            self.batches += 1
            for it, p in zip(items, probs):
                if not it[1].done():
                    it[1].set_result((p, len(items)))
