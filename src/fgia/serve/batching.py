"""One worker that owns the engine: queries queue up and run in micro-batches, each batch one engine call (one
forward pass of the models for all its images)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from PIL import Image

from fgia.serve.protocol import SearchEngine, SearchResultLike


class QueueFull(RuntimeError):
    """More queries are waiting than the service accepts."""


class DecodeSlots:
    """At most `limit` uploads are decoded or searched at once, so the memory decoded images take is bounded
    whatever the number of clients; up to `max_waiting` more wait for a slot (holding only their upload
    bytes), the rest get QueueFull."""

    def __init__(self, limit: int, max_waiting: int) -> None:
        self.limit = limit
        self.max_waiting = max_waiting
        self.waiting = 0
        self.decoding = 0
        self._semaphore: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the block (wait for it, or raise QueueFull when too many wait already)."""
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a semaphore belongs to one event loop (test clients start their own)
            self._semaphore, self._loop = asyncio.Semaphore(self.limit), loop
        if self.waiting >= self.max_waiting:
            raise QueueFull(f"more than {self.max_waiting} queries waiting; try again shortly")
        self.waiting += 1
        try:
            await self._semaphore.acquire()
        finally:
            self.waiting -= 1
        self.decoding += 1
        try:
            yield
        finally:
            self.decoding -= 1
            self._semaphore.release()

    def busy(self) -> bool:
        """Whether uploads are being decoded or wait to be (queries on their way to the batcher)."""
        return self.decoding + self.waiting > 0


@dataclass(frozen=True)
class SearchOptions:
    top_k: int
    pipeline: str
    query_expansion: bool


@dataclass
class _Job:
    image: Image.Image
    options: SearchOptions
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class SearchBatcher:
    """Serialises engine calls on a single worker task, grouping up to `max_batch` queries with equal options.

    The engine runs in a worker thread so the event loop keeps serving pages and images. Concurrent queries share
    one `engine.search` call, so one forward pass: a batch starts when it holds `max_batch` queries, when
    `incoming()` says no further query is on its way (e.g. none is being decoded), or `max_wait_ms` after its
    first query, whichever comes first. Without `incoming`, every batch waits `max_wait_ms` for company. With
    `max_batch=1` this is a plain serial queue. A query whose client went away is dropped before it is computed.
    """

    def __init__(self, engine: SearchEngine, max_batch: int = 1, max_wait_ms: float = 0.0, max_queue: int = 256,
                 incoming: Callable[[], bool] | None = None):
        self.engine = engine
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.incoming = incoming or (lambda: True)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(maxsize=max_queue)
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.batched_queries = 0

    def start(self) -> None:
        """Start the worker on the running event loop."""
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop the worker; queries still waiting get an error."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if not job.future.done():
                job.future.set_exception(RuntimeError("the search service is shutting down"))

    async def search(self, image: Image.Image, options: SearchOptions,
                     gone: Callable[[], Awaitable[bool]] | None = None) -> tuple[SearchResultLike, float]:
        """Queue one query; returns its result and the milliseconds it waited before its batch started.

        `gone()` tells whether the client went away (e.g. Starlette's `request.is_disconnected`): it is polled
        while the query waits, and a query whose client is gone is cancelled, so its batch skips it."""
        self.start()
        job = _Job(image, options, asyncio.get_running_loop().create_future())
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            raise QueueFull(f"more than {self._queue.maxsize} queries waiting; try again shortly") from None
        if gone is None:
            return await job.future
        watcher = asyncio.get_running_loop().create_task(self._watch(job, gone))
        try:
            return await job.future
        finally:
            watcher.cancel()

    @staticmethod
    async def _watch(job: _Job, gone: Callable[[], Awaitable[bool]], every_s: float = 0.05) -> None:
        while not job.future.done():
            if await gone():
                job.future.cancel()
                return
            await asyncio.sleep(every_s)

    async def _collect(self, poll_s: float = 0.002) -> list[_Job]:
        jobs = [await self._queue.get()]
        deadline = time.perf_counter() + self.max_wait_s
        while len(jobs) < self.max_batch:
            if not self._queue.empty():
                jobs.append(self._queue.get_nowait())
                continue
            remaining = deadline - time.perf_counter()
            if remaining <= 0 or not self.incoming():
                break
            try:  # short waits, so that a query finishing its decode joins and an idle pipe starts at once
                jobs.append(await asyncio.wait_for(self._queue.get(), min(remaining, poll_s)))
            except TimeoutError:
                continue
        return jobs

    async def _run(self) -> None:
        while True:
            jobs = [j for j in await self._collect() if not j.future.done()]  # skip clients that went away
            groups: dict[SearchOptions, list[_Job]] = {}
            for job in jobs:
                groups.setdefault(job.options, []).append(job)
            for options, group in groups.items():
                await self._run_group(options, group)

    async def _run_group(self, options: SearchOptions, group: list[_Job]) -> None:
        started = time.perf_counter()
        try:
            results = await asyncio.to_thread(
                self.engine.search, [j.image for j in group], top_k=options.top_k, pipeline=options.pipeline,
                query_expansion=options.query_expansion,
            )
            if len(results) != len(group):
                raise RuntimeError(f"engine returned {len(results)} results for {len(group)} queries")
        except Exception as exc:  # the error belongs to these queries only; the worker carries on
            for job in group:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        self.batches += 1
        self.batched_queries += len(group)
        for job, result in zip(group, results):
            if not job.future.done():
                job.future.set_result((result, (started - job.queued_at) * 1000.0))
