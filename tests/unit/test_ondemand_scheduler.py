"""The on-demand scheduler's rules with a fake swap (the real swap job is exercised in
tests/integration/test_proxy_ondemand.py): batching, ageing, no eviction in flight, minimum
residency, cancelled claims, the queue bound, failed swaps."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from app.errors import SparkError
from app.proxy.errors import QueueFull, SwapFailed
from app.proxy.ondemand import Lease, Scheduler


class Fleet:
    """Fake hosts: what each runs, and a swap that takes ``swap_s`` and checks the rule that
    nothing in flight is evicted."""

    def __init__(self, hosts: list[str], swap_s: float = 0.05, fail: set[str] | None = None):
        self.placed: dict[str, tuple[str | None, float]] = {h: (None, 0.0) for h in hosts}
        self.swap_s = swap_s
        self.fail = fail or set()
        self.sched: Scheduler | None = None
        self.evicted_in_flight: list[str] = []

    def current(self, host: str) -> tuple[str | None, float]:
        return self.placed[host]

    async def swap(self, host: str, key: str) -> None:
        assert self.sched is not None
        cur = self.placed[host][0]
        if cur is not None and self.sched.in_flight.get((host, cur), 0):
            self.evicted_in_flight.append(cur)
        await asyncio.sleep(self.swap_s)
        if key in self.fail:
            raise SparkError("engine failed to start", code="SWAP_FAILED")
        self.placed[host] = (key, time.time())


@contextlib.asynccontextmanager
async def scheduler(fleet: Fleet, **kw: Any) -> AsyncIterator[Scheduler]:
    kw.setdefault("min_residency_s", 0.0)
    kw.setdefault("max_wait_s", 0.3)
    sched = Scheduler(list(fleet.placed), fleet.current, fleet.swap, **kw)
    fleet.sched = sched
    sched.start()
    try:
        yield sched
    finally:
        await sched.stop()


async def use(sched: Scheduler, key: str, hold_s: float = 0.02) -> str:
    """One request: admitted at once if loaded, else queued; holds its lease a while."""
    host = next((h for h in sched.hosts if sched.current(h)[0] == key), None)
    lease: Lease | None = sched.try_admit(host, key) if host else None
    if lease is None:
        lease = await sched.wait(key, host)
    try:
        assert sched.current(lease.host)[0] == key  # never served by another model
        await asyncio.sleep(hold_s)
        return key
    finally:
        lease.release()


async def test_waiting_requests_for_one_model_share_one_swap() -> None:
    fleet = Fleet(["h1"])
    async with scheduler(fleet) as sched:
        got = await asyncio.gather(*(use(sched, "a") for _ in range(10)))
    assert got == ["a"] * 10
    assert sched.swaps == [("h1", "a")]


async def test_alternating_clients_batch_instead_of_thrashing() -> None:
    fleet = Fleet(["h1"], swap_s=0.1)
    async with scheduler(fleet, max_wait_s=0.5) as sched:

        async def client(model: str, n: int) -> list[str]:
            return [await use(sched, model, hold_s=0.01) for _ in range(n)]

        results = await asyncio.gather(*(client("ab"[i % 2], 10) for i in range(8)))
    assert [r.count(r[0]) for r in results] == [10] * 8  # every request served, by its model
    assert fleet.evicted_in_flight == []
    # FIFO would swap on almost every request (about 80); batching needs a handful
    assert len(sched.swaps) <= 8, sched.swaps


async def test_a_busy_model_drains_once_the_other_has_waited_max_wait() -> None:
    fleet = Fleet(["h1"])
    async with scheduler(fleet, max_wait_s=0.3) as sched:
        await use(sched, "a")
        stop = asyncio.Event()

        async def busy_a() -> int:
            served = 0
            while not stop.is_set():
                await use(sched, "a", hold_s=0.03)
                served += 1
            return served

        a_clients = [asyncio.create_task(busy_a()) for _ in range(3)]
        await asyncio.sleep(0.1)
        t0 = time.monotonic()
        assert await use(sched, "b") == "b"
        waited = time.monotonic() - t0
        stop.set()
        await asyncio.gather(*a_clients)
    assert 0.25 <= waited < 1.5, waited  # not starved, but not before max_wait either
    assert fleet.evicted_in_flight == []


async def test_minimum_residency_holds_a_fresh_model() -> None:
    fleet = Fleet(["h1"])
    async with scheduler(fleet, min_residency_s=0.6) as sched:
        await use(sched, "a")
        t0 = time.monotonic()
        await use(sched, "b")
        assert time.monotonic() - t0 >= 0.5


async def test_a_cancelled_request_drops_its_claim() -> None:
    fleet = Fleet(["h1"])
    async with scheduler(fleet, min_residency_s=0.3) as sched:
        await use(sched, "a")
        waiting = asyncio.create_task(sched.wait("b"))
        await asyncio.sleep(0.05)
        assert sched.queues["h1"].count() == 1
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert sched.queues["h1"].count() == 0
        await asyncio.sleep(0.5)  # past the residency: nobody wants b any more
    assert sched.swaps == [("h1", "a")]
    assert sched.in_flight == {}


async def test_queue_bound_answers_busy_with_an_estimate() -> None:
    fleet = Fleet(["h1"], swap_s=0.3)
    async with scheduler(fleet, limit=2) as sched:
        first = [asyncio.create_task(sched.wait("a")) for _ in range(2)]
        await asyncio.sleep(0.01)
        with pytest.raises(QueueFull) as info:
            await sched.wait("b")
        assert info.value.status == 503 and int(info.value.headers["Retry-After"]) >= 1
        for lease in await asyncio.gather(*first):
            lease.release()


async def test_failed_swap_fails_its_waiters_with_503() -> None:
    fleet = Fleet(["h1"], fail={"bad"})
    async with scheduler(fleet) as sched:
        results = await asyncio.gather(*(sched.wait("bad") for _ in range(3)),
                                       return_exceptions=True)  # fmt: skip
    assert all(isinstance(r, SwapFailed) for r in results), results
    assert "engine failed to start" in str(results[0])


async def test_two_hosts_load_two_models_side_by_side() -> None:
    fleet = Fleet(["h1", "h2"])
    async with scheduler(fleet) as sched:
        await asyncio.gather(use(sched, "a"), use(sched, "b"), use(sched, "a"))
    assert {fleet.placed["h1"][0], fleet.placed["h2"][0]} == {"a", "b"}
    assert len(sched.swaps) == 2
