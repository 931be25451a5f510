"""Micro-batching: clips of requests that arrive together go through the engine in one call.

One engine call at a time, in one worker thread: onnxruntime already spreads a call over every
core it was given, so two calls side by side would only compete for them. While a batch runs,
new clips wait in a bounded queue; the next batch takes up to `max_batch` of them, after
waiting at most `max_wait` for the first one's companions. A full queue refuses at once
(`QueueFull`, answered as 503 with Retry-After) instead of growing without limit.
"""
import asyncio
import math
import time
from concurrent.futures import ThreadPoolExecutor


class QueueFull(Exception):
    """The queue holds max_queue clips; retry_after: whole seconds after which a retry may succeed."""

    def __init__(self, retry_after):
        super().__init__(f'queue full, retry after {retry_after} s')
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher is not running (not started yet, or stopping); the clip is not run."""


class Batcher:
    """Runs `run_batch(items) -> results` (one result per item, in order) on batches of submitted items.

    Create it anywhere, `await start()` inside the event loop that will submit, `await stop()` at the end.
    """

    def __init__(self, run_batch, max_batch=8, max_wait=0.005, max_queue=64):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.batches = 0             # engine calls made, for /healthz
        self.items = 0               # clips run
        self.batch_seconds = 0.1     # moving average of one batch's time, for Retry-After
        self._queue = None
        self._running = []           # (item, future) of the batch in the engine now
        self._task = None
        self._executor = None

    async def start(self):
        self._queue = asyncio.Queue(self.max_queue)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix='paddle-soundcls-engine')
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        waiting = list(self._running)
        while self._queue is not None and not self._queue.empty():
            waiting.append(self._queue.get_nowait())
        for _, future in waiting:
            if not future.done():
                future.set_exception(ShuttingDown('the server is shutting down'))
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    @property
    def alive(self):
        return self._task is not None and not self._task.done()

    @property
    def depth(self):
        return self._queue.qsize() if self._queue is not None else 0

    def submit(self, item):
        """Queue one item; returns an asyncio Future of its result. Raises QueueFull at once when
        full, ShuttingDown when the batcher does not run."""
        if not self.alive:
            raise ShuttingDown('the batcher is not running')
        future = asyncio.get_running_loop().create_future()
        try:
            self._queue.put_nowait((item, future))
        except asyncio.QueueFull:
            raise QueueFull(self.retry_after()) from None
        return future

    def retry_after(self):
        """Seconds until the queue has room again: the batches ahead of a new clip times one batch's time."""
        batches_ahead = math.ceil(self.depth / self.max_batch) + 1
        return max(1, math.ceil(batches_ahead * self.batch_seconds))

    async def _collect(self):
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except asyncio.TimeoutError:
                break
        return batch

    def _one_by_one(self, items):
        """After a failed batch: each item alone, so one bad item fails only its own request."""
        results = []
        for item in items:
            try:
                results.append(self.run_batch([item])[0])
            except Exception as exc:  # handed to that request's future
                results.append(exc)
        return results

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            # Requests that timed out or went away while queued are not run.
            batch = [(item, future) for item, future in batch if not future.done()]
            if not batch:
                continue
            items = [item for item, _ in batch]
            self._running = batch
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, self.run_batch, items)
            except Exception:
                results = await loop.run_in_executor(self._executor, self._one_by_one, items)
            self._running = []
            self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * (time.monotonic() - started)
            self.batches += 1
            self.items += len(items)
            for (_, future), result in zip(batch, results):
                if future.done():
                    continue
                if isinstance(result, Exception):
                    future.set_exception(result)
                else:
                    future.set_result(result)
