"""Dynamic batching: concurrent requests gathered into one model call, on a bounded pool.

A request becomes an *item*: a ``key`` (what kind of work: the same outputs, the same
method and options), its number of ``rows`` (images) and a payload.  Each of the
``workers`` takes the oldest item, then every queued item with the same key while the
batch has room (``max_batch_size`` rows), waiting at most ``max_delay_s`` for more, and
runs the batch in its thread.  Items of another key keep their place for the next batch.

Bounded everywhere: at most ``max_queue`` rows wait (a request beyond that gets
:class:`QueueFull`, answered 503 + Retry-After), at most ``workers`` batches run.  An item
whose caller went away (client disconnected, timed out) leaves the queue at once and is
never run; one that is already running finishes and its result is dropped.  A batch that
fails is re-run one item at a time, so one bad item never fails its neighbours, and an
exception never ends a worker.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Hashable, Sequence

log = logging.getLogger("onnx_explain.serve")

#: ``run(key, payloads) -> results``: one result (or exception instance) per payload.
Runner = Callable[[Hashable, Sequence[Any]], Sequence[Any]]


class QueueFull(Exception):
    """The queue holds ``max_queue`` rows already; try again after ``retry_after`` seconds."""

    def __init__(self, depth: int, retry_after: int) -> None:
        super().__init__(f"server busy: {depth} images queued; retry after {retry_after} s")
        self.depth = depth
        self.retry_after = retry_after


class ShuttingDown(Exception):
    """The batcher no longer takes work."""


@dataclasses.dataclass(eq=False)
class _Item:
    key: Hashable
    rows: int
    payload: Any
    future: asyncio.Future
    queued: bool = True


class Batcher:
    def __init__(
        self,
        run: Runner,
        *,
        max_batch_size: int,
        max_delay_s: float,
        max_queue: int,
        workers: int,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self._run = run
        self.max_batch_size = int(max_batch_size)
        self.max_delay_s = float(max_delay_s)
        self.max_queue = int(max_queue)
        self.workers = int(workers)
        self._on_batch = on_batch
        self._queue: collections.deque[_Item] = collections.deque()
        self._depth = 0
        self._running = 0
        self._cond: asyncio.Condition | None = None
        self._tasks: list[asyncio.Task] = []
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False
        self._rate = 0.0  # rows per second, moving average (for Retry-After)

    # ------------------------------------------------------------------ state
    @property
    def depth(self) -> int:
        """Rows waiting for a worker."""
        return self._depth

    @property
    def running(self) -> int:
        """Batches being computed now."""
        return self._running

    def retry_after(self) -> int:
        """Seconds until the queue has probably drained (1..60)."""
        if self._rate <= 0:
            return 1
        return int(min(60, max(1, math.ceil(self._depth / (self._rate * self.workers)))))

    # ------------------------------------------------------------------ life
    async def start(self) -> None:
        self._cond = asyncio.Condition()
        self._pool = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="onnx-explain-worker")
        self._tasks = [asyncio.create_task(self._worker(), name=f"batcher-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        """Take no new work, finish what is queued and running, then stop the workers."""
        self._closing = True
        if self._cond is not None:
            async with self._cond:
                self._cond.notify_all()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    # ------------------------------------------------------------------ submit
    async def submit(self, key: Hashable, rows: int, payload: Any) -> Any:
        """Queue the work and wait for its result (raises what the runner raised for it)."""
        if self._closing or self._cond is None:
            raise ShuttingDown("the server is shutting down")
        if self._depth > 0 and self._depth + rows > self.max_queue:
            raise QueueFull(self._depth, self.retry_after())
        item = _Item(key, int(rows), payload, asyncio.get_running_loop().create_future())
        self._queue.append(item)
        self._depth += item.rows
        async with self._cond:
            self._cond.notify_all()
        try:
            return await item.future
        finally:
            if item.queued:  # the caller went away before a worker took it: drop it now
                item.queued = False
                self._depth -= item.rows
                try:
                    self._queue.remove(item)
                except ValueError:  # pragma: no cover - already taken
                    pass

    # ------------------------------------------------------------------ workers
    def _take(self, item: _Item) -> None:
        self._queue.remove(item)
        item.queued = False
        self._depth -= item.rows

    def _take_same_key(self, key: Hashable, room: int) -> list[_Item]:
        taken = []
        for item in list(self._queue):
            if room <= 0:
                break
            if item.key == key and item.rows <= room and not item.future.done():
                self._take(item)
                taken.append(item)
                room -= item.rows
        return taken

    async def _gather(self) -> list[_Item] | None:
        assert self._cond is not None
        loop = asyncio.get_running_loop()
        async with self._cond:
            while True:
                while self._queue and self._queue[0].future.done():
                    self._take(self._queue[0])
                if self._queue:
                    break
                if self._closing:
                    return None
                await self._cond.wait()
            first = self._queue[0]
            self._take(first)
            batch, rows = [first], first.rows
            deadline = loop.time() + self.max_delay_s
            while rows < self.max_batch_size:
                more = self._take_same_key(first.key, self.max_batch_size - rows)
                batch += more
                rows += sum(i.rows for i in more)
                remaining = deadline - loop.time()
                if rows >= self.max_batch_size or remaining <= 0 or self._closing:
                    break
                try:
                    await asyncio.wait_for(self._cond.wait(), remaining)
                except asyncio.TimeoutError:
                    batch += self._take_same_key(first.key, self.max_batch_size - rows)
                    break
            return [i for i in batch if not i.future.done()]

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            if batch is None:
                return
            if not batch:
                continue
            rows = sum(i.rows for i in batch)
            self._running += 1
            start = time.perf_counter()
            try:
                results = await loop.run_in_executor(
                    self._pool, self._run_isolated, batch[0].key, [i.payload for i in batch]
                )
            except Exception as exc:  # the executor itself failed (shut down): fail the batch
                results = [exc] * len(batch)
            finally:
                self._running -= 1
            seconds = time.perf_counter() - start
            if seconds > 0:
                rate = rows / seconds
                self._rate = rate if self._rate <= 0 else 0.8 * self._rate + 0.2 * rate
            if self._on_batch is not None:
                self._on_batch(rows, seconds)
            for item, result in zip(batch, results):
                if item.future.done():  # the caller went away while this ran
                    continue
                if isinstance(result, BaseException):
                    item.future.set_exception(result)
                else:
                    item.future.set_result(result)

    def _run_isolated(self, key: Hashable, payloads: list[Any]) -> list[Any]:
        """Run a batch; when it fails, each payload alone, so only the bad one fails."""
        try:
            results = list(self._run(key, payloads))
            if len(results) != len(payloads):
                raise RuntimeError(f"runner gave {len(results)} results for {len(payloads)} items")
            return results
        except Exception as exc:
            if len(payloads) == 1:
                return [exc]
            log.debug("batch of %d failed (%s); running its items one by one", len(payloads), exc)
        out: list[Any] = []
        for payload in payloads:
            try:
                out.extend(self._run(key, [payload]))
            except Exception as exc:
                out.append(exc)
        return out
