"""The engine worker: micro-batches of equal options, errors confined to their batch, abandoned queries dropped."""

from __future__ import annotations

import asyncio

from PIL import Image

from fgia.serve.batching import DecodeSlots, SearchBatcher, SearchOptions

C2F = SearchOptions(top_k=2, pipeline="c2f", query_expansion=False)


def query(solid, colour: str) -> Image.Image:
    return solid(colour, (16, 16))


async def run_concurrently(batcher: SearchBatcher, jobs):
    try:
        return await asyncio.gather(*(batcher.search(image, opts) for image, opts in jobs), return_exceptions=True)
    finally:
        await batcher.stop()


def test_concurrent_queries_share_one_batch_and_get_their_own_answers(fake_engine, solid):
    colours = ["red", "green", "blue", "green"]
    batcher = SearchBatcher(fake_engine, max_batch=8, max_wait_ms=200)
    results = asyncio.run(run_concurrently(batcher, [(query(solid, c), C2F) for c in colours]))
    assert [call["n"] for call in fake_engine.calls] == [4]
    assert [r.labels[0] for r, _ in results] == [f"{c} species" for c in colours]
    assert all(wait_ms >= 0 for _, wait_ms in results)
    assert (batcher.batches, batcher.batched_queries) == (1, 4)


def test_batches_respect_max_batch_and_split_by_options(fake_engine, solid):
    single = SearchOptions(top_k=3, pipeline="coarse", query_expansion=True)
    jobs = [(query(solid, "red"), C2F)] * 3 + [(query(solid, "blue"), single)] * 2
    batcher = SearchBatcher(fake_engine, max_batch=4, max_wait_ms=200)
    results = asyncio.run(run_concurrently(batcher, jobs))
    calls = [(c["n"], c["pipeline"], c["top_k"]) for c in fake_engine.calls]
    assert calls == [(3, "c2f", 2), (1, "coarse", 3), (1, "coarse", 3)]
    assert [len(r.ids) for r, _ in results] == [2, 2, 2, 3, 3]


def test_max_batch_one_is_a_serial_queue(fake_engine, solid):
    batcher = SearchBatcher(fake_engine, max_batch=1)
    results = asyncio.run(run_concurrently(batcher, [(query(solid, "green"), C2F)] * 5))
    assert [c["n"] for c in fake_engine.calls] == [1] * 5
    assert all(r.labels[0] == "green species" for r, _ in results)


def test_engine_error_fails_its_batch_only(fake_engine, solid):
    async def scenario():
        batcher = SearchBatcher(fake_engine, max_batch=4, max_wait_ms=100)
        fake_engine.fail_with = RuntimeError("boom")
        failed = await asyncio.gather(*(batcher.search(query(solid, "red"), C2F) for _ in range(2)),
                                      return_exceptions=True)
        fake_engine.fail_with = None
        ok, _ = await batcher.search(query(solid, "blue"), C2F)
        await batcher.stop()
        return failed, ok

    failed, ok = asyncio.run(scenario())
    assert all(isinstance(e, RuntimeError) and str(e) == "boom" for e in failed)
    assert ok.labels[0] == "blue species"


def test_wrong_result_count_from_engine_is_an_error(fake_engine, solid):
    fake_engine.search = lambda images, **kw: []
    batcher = SearchBatcher(fake_engine)
    (err,) = asyncio.run(run_concurrently(batcher, [(query(solid, "red"), C2F)]))
    assert isinstance(err, RuntimeError) and "0 results for 1 queries" in str(err)


def test_full_queue_is_refused(fake_engine, solid):
    # Tasks run in creation order, so the first two queue up before the worker (created by the first) drains them.
    batcher = SearchBatcher(fake_engine, max_batch=1, max_queue=2)
    outcomes = asyncio.run(run_concurrently(batcher, [(query(solid, "red"), C2F)] * 4))
    assert [type(o).__name__ for o in outcomes] == ["tuple", "tuple", "QueueFull", "QueueFull"]
    assert "more than 2 queries waiting" in str(outcomes[2])


def test_cancelled_query_is_skipped(fake_engine, solid):
    async def scenario():
        batcher = SearchBatcher(fake_engine, max_batch=4, max_wait_ms=100)
        gone = asyncio.ensure_future(batcher.search(query(solid, "red"), C2F))
        await asyncio.sleep(0)
        gone.cancel()
        kept, _ = await batcher.search(query(solid, "green"), C2F)
        await batcher.stop()
        return kept

    kept = asyncio.run(scenario())
    assert [c["n"] for c in fake_engine.calls] == [1]
    assert kept.labels[0] == "green species"


def test_a_query_whose_client_went_away_is_dropped_before_it_is_computed(fake_engine, solid):
    async def scenario():
        batcher = SearchBatcher(fake_engine, max_batch=8, max_wait_ms=300)

        async def gone() -> bool:
            return True

        async def here() -> bool:
            return False

        abandoned = asyncio.ensure_future(batcher.search(query(solid, "red"), C2F, gone=gone))
        await asyncio.sleep(0.1)  # the watcher notices while the batch still waits for company
        answered = await batcher.search(query(solid, "blue"), C2F, gone=here)
        await batcher.stop()
        return abandoned, answered

    abandoned, (result, _) = asyncio.run(scenario())
    assert abandoned.cancelled() and result.labels[0] == "blue species"
    assert [c["n"] for c in fake_engine.calls] == [1]  # only the query whose client stayed was computed


def test_a_batch_waits_for_queries_still_on_their_way_and_no_longer(fake_engine, solid):
    async def scenario():
        on_the_way = [True]
        batcher = SearchBatcher(fake_engine, max_batch=8, max_wait_ms=5000, incoming=lambda: on_the_way[0])
        first = asyncio.ensure_future(batcher.search(query(solid, "red"), C2F))
        await asyncio.sleep(0.2)  # the second query is still being decoded: the batch keeps waiting for it
        second = asyncio.ensure_future(batcher.search(query(solid, "blue"), C2F))
        on_the_way[0] = False  # nothing else is coming: the batch starts without waiting out max_wait_ms
        started = asyncio.get_running_loop().time()
        await asyncio.gather(first, second)
        elapsed = asyncio.get_running_loop().time() - started
        alone_started = asyncio.get_running_loop().time()
        await batcher.search(query(solid, "green"), C2F)  # an idle pipe: no wait at all
        alone = asyncio.get_running_loop().time() - alone_started
        await batcher.stop()
        return elapsed, alone

    elapsed, alone = asyncio.run(scenario())
    assert [c["n"] for c in fake_engine.calls] == [2, 1]
    assert elapsed < 1.0 and alone < 1.0  # far below max_wait_ms


def test_decode_slots_say_when_queries_are_on_their_way():
    async def scenario():
        slots = DecodeSlots(limit=1, max_waiting=4)
        seen = [slots.busy()]
        async with slots.slot():
            seen.append(slots.busy())
        seen.append(slots.busy())
        return seen

    assert asyncio.run(scenario()) == [False, True, False]
