"""On-demand swaps: requests for a catalog model that runs nowhere (and whose recipe says
``on_demand: true``) wait while a swap job loads it, then go through.

Per host, one decision loop over the waiting requests, grouped by model:

- **batching with ageing**: the next model is the one with the highest score, its number of
  waiting requests plus the age of its oldest one in units of ``max_wait_s``; all its waiting
  requests are let through together once it is loaded;
- **no eviction in flight**: a model is replaced only when no request to it is in flight;
  to get there, once a waiting model's oldest request is ``max_wait_s`` old, new requests to
  the loaded model queue too (it drains) instead of starving the others;
- **minimum residency**: a model stays at least ``min_residency_s`` after it was loaded;
- **cancelled requests drop their claim**: a model nobody waits for any more is not loaded
  (a swap already started finishes: stopping it half-way would leave the host empty);
- **bounded**: over ``limit`` waiting requests in all, QueueFull (503 + Retry-After).

The swap itself is injected (``swap(host, key)``): the proxy submits the same swap job as
``POST /api/swap`` (swap lock included) and waits for its final event; tests pass a fake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from app.errors import SparkError
from app.proxy.errors import QueueFull, SwapFailed

log = logging.getLogger(__name__)

Swap = Callable[[str, str], Awaitable[None]]
"""Load catalog key on host; returns when it serves, raises SparkError when it failed."""
Current = Callable[[str], tuple[str | None, float]]
"""What a host runs now: (catalog key or None, since as a Unix time)."""
TICK_S = 0.25
DEFAULT_SWAP_S = 60.0


class Lease:
    """A request's claim on a loaded model: while held, the model is not replaced."""

    __slots__ = ("_released", "host", "key", "sched")

    def __init__(self, sched: Scheduler, host: str, key: str):
        self.sched, self.host, self.key = sched, host, key
        self._released = False
        sched.in_flight[(host, key)] = sched.in_flight.get((host, key), 0) + 1

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        n = self.sched.in_flight.get((self.host, self.key), 1) - 1
        if n <= 0:
            self.sched.in_flight.pop((self.host, self.key), None)
        else:
            self.sched.in_flight[(self.host, self.key)] = n
        q = self.sched.queues.get(self.host)
        if q is not None and q.waiting:  # only a waiting model cares that this one drained
            q.event.set()


@dataclass(eq=False)
class Waiter:
    key: str
    host: str
    since: float
    future: asyncio.Future[Lease]


@dataclass
class HostQueue:
    host: str
    waiting: dict[str, list[Waiter]] = field(default_factory=dict)
    swapping: str | None = None
    draining: bool = False
    event: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None
    swap_task: asyncio.Task[None] | None = None

    def count(self) -> int:
        return sum(len(ws) for ws in self.waiting.values())


class Scheduler:
    def __init__(
        self,
        hosts: list[str],
        current: Current,
        swap: Swap,
        *,
        limit: int = 64,
        min_residency_s: float = 60.0,
        max_wait_s: float = 30.0,
        on_swap: Callable[[str], None] | None = None,
    ):
        self.hosts = list(hosts)
        self.current = current
        self.swap = swap
        self.limit = limit
        self.min_residency_s = min_residency_s
        self.max_wait_s = max(max_wait_s, 0.001)
        self.on_swap = on_swap
        self.queues = {h: HostQueue(h) for h in self.hosts}
        self.in_flight: dict[tuple[str, str], int] = {}
        self.swap_s = DEFAULT_SWAP_S
        self.swaps: list[tuple[str, str]] = []
        """(host, key) of every swap started, in order (for figures and tests)."""

    # --- the request side ---------------------------------------------------------------

    def start(self) -> None:
        for q in self.queues.values():
            if q.task is None:
                q.task = asyncio.create_task(self._loop(q))

    async def stop(self) -> None:
        for q in self.queues.values():
            if q.task is not None:
                q.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await q.task
                q.task = None
            for ws in q.waiting.values():
                for w in ws:
                    if not w.future.done():
                        w.future.cancel()

    def wake(self, host: str) -> None:
        q = self.queues.get(host)
        if q is not None:
            q.event.set()

    def try_admit(self, host: str, key: str) -> Lease | None:
        """A lease at once when ``key`` runs on ``host`` and nothing holds it back."""
        q = self.queues.get(host)
        if q is None:
            return Lease(self, host, key)
        if self.current(host)[0] != key or q.swapping or q.draining:
            return None
        return Lease(self, host, key)

    async def wait(self, key: str, host: str | None = None) -> Lease:
        """Queue for ``key`` (on ``host`` when given, else the best host) until it is loaded
        and let through; cancel the await to drop the claim."""
        total = sum(q.count() for q in self.queues.values())
        if total >= self.limit:
            raise QueueFull(
                f"{total} requests already wait for a model to load; try again later",
                retry_after=self.estimate(),
            )
        host = host or self.pick_host(key)
        q = self.queues[host]
        waiter = Waiter(key, host, time.monotonic(), asyncio.get_running_loop().create_future())
        q.waiting.setdefault(key, []).append(waiter)
        q.event.set()
        try:
            return await waiter.future
        except asyncio.CancelledError:
            f = waiter.future  # let through just as the client left: give the lease back
            if f.done() and not f.cancelled() and f.exception() is None:
                f.result().release()
            raise
        finally:
            self._drop(q, waiter)

    def _drop(self, q: HostQueue, waiter: Waiter) -> None:
        ws = q.waiting.get(waiter.key)
        if ws and waiter in ws:
            ws.remove(waiter)
            if not ws:
                del q.waiting[waiter.key]
            q.event.set()

    def pick_host(self, key: str) -> str:
        """Where ``key`` should load: a host already waiting for it, else an empty host, else
        the host whose model is least busy (then longest resident)."""
        for h, q in self.queues.items():
            if key in q.waiting or q.swapping == key:
                return h

        def rank(h: str) -> tuple[int, int, float]:
            cur, since = self.current(h)
            q = self.queues[h]
            busy = q.count() + (q.swapping is not None)
            if cur is None:
                return (0, busy, 0.0)
            return (1, busy + self.in_flight.get((h, cur), 0), since)

        return min(self.hosts, key=rank)

    def estimate(self) -> float:
        """Seconds until a new request would likely be served: one swap per waiting model."""
        models = sum(len(q.waiting) for q in self.queues.values())
        return self.swap_s * (models + 1)

    # --- the decision loop --------------------------------------------------------------

    async def _loop(self, q: HostQueue) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # not wait_for: it can swallow a cancel
                async with asyncio.timeout(TICK_S if q.waiting else None):
                    await q.event.wait()
            q.event.clear()
            try:
                await self._step(q)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("on-demand: decision loop error on %s", q.host)

    async def _step(self, q: HostQueue) -> None:
        if q.swapping:
            return
        if not q.waiting:
            q.draining = False
            return
        now = time.monotonic()
        cur, since = self.current(q.host)

        def score(key: str) -> float:
            ws = q.waiting[key]
            return len(ws) + (now - min(w.since for w in ws)) / self.max_wait_s

        best = max(q.waiting, key=score)
        if best == cur:
            q.draining = False
            self._let_through(q, best)
            return
        idle = cur is None or self.in_flight.get((q.host, cur), 0) == 0
        resident = cur is None or time.time() - since >= self.min_residency_s
        nobody_for_cur = cur is None or cur not in q.waiting
        oldest = now - min(w.since for w in q.waiting[best])
        if oldest >= self.max_wait_s:
            q.draining = True  # stop admitting the loaded model so it drains
        if idle and resident and (nobody_for_cur or q.draining):
            q.swapping = best
            q.swap_task = asyncio.create_task(self._swap(q, best))

    def _let_through(self, q: HostQueue, key: str) -> None:
        for w in q.waiting.pop(key, []):
            if not w.future.done():
                w.future.set_result(Lease(self, q.host, key))

    async def _swap(self, q: HostQueue, key: str) -> None:
        t0 = time.monotonic()
        self.swaps.append((q.host, key))
        if self.on_swap:
            self.on_swap(key)
        try:
            await self.swap(q.host, key)
        except SparkError as exc:
            log.info("on-demand: swap of %s on %s failed (%s)", key, q.host, exc.code)
            error = SwapFailed(
                f"loading {key} failed: {exc.message}", retry_after=self.swap_s,
                code=exc.code if exc.code == "LOCKED" else None,
            )  # fmt: skip
            for w in q.waiting.pop(key, []):
                if not w.future.done():
                    w.future.set_exception(error)
        except Exception as exc:
            log.exception("on-demand: swap of %s on %s broke", key, q.host)
            for w in q.waiting.pop(key, []):
                if not w.future.done():
                    w.future.set_exception(
                        SwapFailed(
                            f"loading {key} failed ({type(exc).__name__})", retry_after=self.swap_s
                        )
                    )
        else:
            took = time.monotonic() - t0
            self.swap_s = 0.7 * self.swap_s + 0.3 * took if self.swaps[1:] else took
            if self.current(q.host)[0] == key:
                self._let_through(q, key)
        finally:
            q.swapping = None
            q.draining = False
            q.event.set()
