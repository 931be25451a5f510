"""The engine: all of the server's heavy work, in one worker thread, one unit at a time, shared fairly.

One engine call at a time, in one worker thread: onnxruntime already spreads a call over every
core it was given, so two calls side by side would only compete for them. Decoding and
resampling run there too, in bounded steps, so no request's preprocessing competes with the
model for the cores either.

Units of work: a model unit (one clip, clip segment or window; units of the same kind and
length from different requests are batched into one engine call, up to `max_batch`, the first
one waiting at most `max_wait` for companions) or a step (a function run alone: one block of
decoding or resampling). Every unit waits in a bounded queue: a full queue refuses at once
(`QueueFull`, answered as 503 with Retry-After) instead of growing without limit.

Fairness: units belong to flows (one per request or stream). A flow that has had less than
`quantum` seconds of engine time is new; new flows go first, so a short request waits at most
for the batch running now, however much work others have queued. The others take turns, the
head unit of every waiting flow in a batch before any flow's second, so no long request or
stream holds the engine for more than its share of a batch; a batch with room left takes the
units behind the heads (a request alone still batches its windows); after 4 batches of new
flows in a row, one of the others runs, so none starves.
Work of a flow whose client left or whose deadline passed is dropped before it runs.
"""
import asyncio
import math
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

NEW_FLOW_STREAK = 4     # batches of new flows in a row while older flows wait
# After a step of a new flow (decoding is followed at once by scoring), the engine waits up to
# this long for that flow's next unit before it starts an older flow's: the moment the event
# loop needs to pass the step's result on and submit what follows.
FOLLOW_UP_SECONDS = 0.02


class QueueFull(Exception):
    """The queue holds max_queue units; retry_after: whole seconds after which a retry may succeed."""

    def __init__(self, retry_after):
        super().__init__(f'queue full, retry after {retry_after} s')
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher is not running (not started yet, or stopping); the work is not run."""


class Flow:
    """The work of one request or one stream: its units in order, and the engine time it has had."""

    def __init__(self):
        self.units = deque()
        self.served = 0.0
        self.closed = False

    def cancel(self):
        """Drop the waiting units (their futures are cancelled) and refuse new ones."""
        self.closed = True
        for unit in list(self.units):
            unit.future.cancel()


class _Unit:
    __slots__ = ('flow', 'run', 'key', 'item', 'future', 'arrived')

    def __init__(self, flow, run, key, item, future):
        self.flow, self.run, self.key, self.item, self.future = flow, run, key, item, future
        self.arrived = time.monotonic()


def run_steps(fns):
    """Runs steps; a step's exception is its result (it must not be run twice)."""
    results = []
    for fn in fns:
        try:
            results.append(fn())
        except Exception as exc:  # handed to that step's future
            results.append(exc)
    return results


class Batcher:
    """Runs units of work in one engine thread: `run_batch(items) -> results` (one result per item,
    in order) on batches of submitted items, and single steps.

    Create it anywhere, `await start()` inside the event loop that will submit, `await stop()` at the end.
    """

    def __init__(self, run_batch, max_batch=8, max_wait=0.005, max_queue=64, quantum=0.1):
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.quantum = quantum
        self.batches = 0             # engine calls made, for /healthz
        self.items = 0               # model units run
        self.steps = 0               # decoding / resampling steps run
        self.batch_seconds = 0.1     # moving average of one batch's time, for Retry-After
        self._flows = OrderedDict()  # flows with waiting units, in turn order
        self._depth = 0
        self._new_streak = 0
        self._wakeup = None
        self._follow_up = None       # (flow, event): the new flow whose next unit the engine waits for
        self._running = []           # units in the engine now
        self._task = None
        self._executor = None

    async def start(self):
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix='paddle-soundcls-engine')
        self._task = asyncio.get_running_loop().create_task(self._serve())

    async def stop(self):
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        waiting = list(self._running) + [unit for flow in self._flows.values() for unit in flow.units]
        for unit in waiting:
            if not unit.future.done():
                unit.future.set_exception(ShuttingDown('the server is shutting down'))
        self._flows.clear()
        self._depth = 0
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    @property
    def alive(self):
        return self._task is not None and not self._task.done()

    @property
    def depth(self):
        """Units waiting for the engine."""
        return self._depth

    def submit(self, item, flow=None, run=None, key=None):
        """Queue one item for `run` (default run_batch), batched with others of the same run and key;
        returns an asyncio Future of its result. Raises QueueFull at once when full, ShuttingDown
        when the batcher does not run. flow: the Flow it belongs to (default: a flow of its own)."""
        return self.submit_many([item], flow, run, key)[0]

    def submit_many(self, items, flow=None, run=None, key=None):
        """Queue several items of one flow, all or none (QueueFull when they do not all fit)."""
        if not self.alive:
            raise ShuttingDown('the batcher is not running')
        flow = flow if flow is not None else Flow()
        if flow.closed:
            raise asyncio.CancelledError()
        if self._depth + len(items) > self.max_queue:
            raise QueueFull(self.retry_after(len(items)))
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            unit = _Unit(flow, run or self.run_batch, key, item, loop.create_future())
            unit.future.add_done_callback(lambda _, unit=unit: self._forget(unit))
            flow.units.append(unit)
            futures.append(unit.future)
        self._depth += len(items)
        self._flows.setdefault(id(flow), flow)
        self._wakeup.set()
        if self._follow_up is not None and self._follow_up[0] is flow:
            self._follow_up[1].set()
        return futures

    def call(self, fn, flow=None):
        """Run fn() alone in the engine thread (a step, e.g. one block of decoding); a Future of its result."""
        return self.submit(fn, flow, run=run_steps, key=object())

    def retry_after(self, units=1):
        """Seconds until the queue has room again: the batches ahead of new work times one batch's time."""
        batches_ahead = math.ceil((self._depth + units) / self.max_batch)
        return max(1, math.ceil(batches_ahead * self.batch_seconds))

    def _forget(self, unit):
        """A unit that got its result, or whose future was cancelled (a client gone, a deadline passed)."""
        flow = unit.flow
        try:
            flow.units.remove(unit)
        except ValueError:
            return  # taken into a batch already
        self._depth -= 1
        if not flow.units:
            self._flows.pop(id(flow), None)

    def _pick(self):
        """(units to run now, or None; seconds until a waiting batch should run, or None)."""
        flows = list(self._flows.values())
        new = [flow for flow in flows if flow.served < self.quantum]
        old = [flow for flow in flows if flow.served >= self.quantum]
        classes = [new, old]
        if old and (not new or self._new_streak >= NEW_FLOW_STREAK):
            classes = [old, new]
        wait = None
        for members in classes:
            for flow in members:
                head = flow.units[0]
                if head.run is run_steps:
                    batch = [head]
                elif wait is not None:
                    continue   # a batch before it waits for companions: only steps may run meanwhile
                else:
                    batch = self._fill([head] + [other.units[0] for other in members if other is not flow and
                                                 other.units[0].run == head.run and
                                                 other.units[0].key == head.key][:self.max_batch - 1])
                    remaining = head.arrived + self.max_wait - time.monotonic()
                    if len(batch) < self.max_batch and remaining > 0:
                        wait = remaining
                        continue
                self._new_streak = self._new_streak + 1 if members is new and old else 0
                return batch, None
            if wait is not None:
                break   # nothing of a lower class starts while this class waits
        return None, wait

    def _fill(self, heads):
        """The heads of their flows, then while the batch has room the units behind them (of the
        same run and key, in their flow's order), one more per flow in turn: a request's windows or
        segments still share engine calls when it is alone, and never push out another flow's head."""
        batch, level = list(heads), 1
        while len(batch) < self.max_batch:
            grew = False
            for head in heads:
                units = head.flow.units
                if level < len(units) and all(units[i].run == head.run and units[i].key == head.key
                                              for i in range(1, level + 1)):
                    batch.append(units[level])
                    grew = True
                    if len(batch) == self.max_batch:
                        break
            if not grew:
                break
            level += 1
        return batch

    def _take(self, batch):
        for unit in batch:
            flow = unit.flow
            flow.units.popleft()
            self._depth -= 1
            # Turn order: a flow that ran goes to the back.
            self._flows.pop(id(flow), None)
            if flow.units:
                self._flows[id(flow)] = flow

    def _one_by_one(self, run, items):
        """After a failed batch: each item alone, so one bad item fails only its own request."""
        results = []
        for item in items:
            try:
                results.append(run([item])[0])
            except Exception as exc:  # handed to that request's future
                results.append(exc)
        return results

    async def _serve(self):
        loop = asyncio.get_running_loop()
        while True:
            batch, wait = self._pick()
            if batch is None:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), wait)
                except asyncio.TimeoutError:
                    pass
                continue
            self._take(batch)
            # Futures cancelled since they were picked (their done callbacks have not run yet).
            batch = [unit for unit in batch if not unit.future.done()]
            if not batch:
                continue
            run, items = batch[0].run, [unit.item for unit in batch]
            self._running = batch
            started = time.monotonic()
            try:
                results = await loop.run_in_executor(self._executor, run, items)
            except Exception:
                results = await loop.run_in_executor(self._executor, self._one_by_one, run, items)
            elapsed = time.monotonic() - started
            self._running = []
            for unit in batch:
                unit.flow.served += elapsed / len(batch)
            if run is run_steps:
                self.steps += 1
            else:
                self.batch_seconds = 0.8 * self.batch_seconds + 0.2 * elapsed
                self.batches += 1
                self.items += len(items)
            for unit, result in zip(batch, results):
                if unit.future.done():
                    continue
                if isinstance(result, Exception):
                    unit.future.set_exception(result)
                else:
                    unit.future.set_result(result)
            flow = batch[0].flow
            if run is run_steps and self._flows and flow.served < self.quantum and not flow.units and not flow.closed:
                self._follow_up = (flow, asyncio.Event())
                try:
                    await asyncio.wait_for(self._follow_up[1].wait(), FOLLOW_UP_SECONDS)
                except asyncio.TimeoutError:
                    pass
                finally:
                    self._follow_up = None
