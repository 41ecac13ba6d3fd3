"""Per-model figures of the proxy: requests, errors, in flight, time to first byte, tokens/s
(from the ``usage`` an upstream reports), swaps. Kept in memory, read by ``GET
/api/proxy/stats`` and published every few seconds as ``spark.evt.proxy.stats``."""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from dataclasses import dataclass, field

from app import contracts as c
from app.bus import Bus
from app.errors import SparkError

log = logging.getLogger(__name__)

PUBLISH_EVERY_S = 10.0
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def completion_tokens(tail: bytes) -> int | None:
    """The last ``completion_tokens`` in the tail of a body or stream (usage comes last)."""
    found = _COMPLETION_TOKENS.findall(tail)
    return int(found[-1]) if found else None


@dataclass
class ModelFigures:
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    swaps: int = 0
    completion_tokens: int = 0
    generation_s: float = 0.0
    ttfb_s: deque[float] = field(default_factory=lambda: deque(maxlen=1000))

    def snapshot(self) -> c.ProxyModelStats:
        ttfb = sorted(self.ttfb_s)

        def pct(p: float) -> float | None:
            return round(ttfb[min(len(ttfb) - 1, int(p * len(ttfb)))] * 1000, 3) if ttfb else None

        rate = self.completion_tokens / self.generation_s if self.generation_s > 0 else None
        return c.ProxyModelStats(
            requests=self.requests, errors=self.errors, in_flight=self.in_flight,
            ttfb_ms_p50=pct(0.5), ttfb_ms_p99=pct(0.99),
            completion_tokens=self.completion_tokens,
            tokens_per_s=round(rate, 2) if rate is not None else None, swaps=self.swaps,
        )  # fmt: skip


class Metrics:
    def __init__(self, publish_every_s: float = PUBLISH_EVERY_S) -> None:
        self.publish_every_s = publish_every_s
        self._stopping = False
        self.models: dict[str, ModelFigures] = {}
        self._task: asyncio.Task[None] | None = None
        self._changed = False

    def of(self, model: str) -> ModelFigures:
        self._changed = True
        figures = self.models.get(model)
        if figures is None:
            figures = self.models[model] = ModelFigures()
        return figures

    def started(self, model: str) -> None:
        f = self.of(model)
        f.requests += 1
        f.in_flight += 1

    def finished(
        self, model: str, *, ok: bool, ttfb_s: float | None, total_s: float, tokens: int | None
    ) -> None:
        f = self.of(model)
        f.in_flight -= 1
        if not ok:
            f.errors += 1
        if ttfb_s is not None:
            f.ttfb_s.append(ttfb_s)
        if tokens:
            f.completion_tokens += tokens
            f.generation_s += total_s

    def failed(self, model: str) -> None:
        """A request refused before it reached an upstream (404, 502, queue full, …)."""
        f = self.of(model)
        f.requests += 1
        f.errors += 1

    def swapped(self, model: str) -> None:
        self.of(model).swaps += 1

    def snapshot(self) -> dict[str, c.ProxyModelStats]:
        return {name: f.snapshot() for name, f in sorted(self.models.items())}

    # --- publishing ---------------------------------------------------------------------

    def start(self, bus: Bus) -> None:
        self._task = asyncio.create_task(self._publish_loop(bus))

    async def stop(self) -> None:
        """End the loop. nats-py can swallow a cancel that lands inside a publish, so the loop
        also checks a flag, and the wait is bounded."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait([self._task], timeout=5)

    async def _publish_loop(self, bus: Bus) -> None:
        while not self._stopping:
            await asyncio.sleep(self.publish_every_s)
            if not self._changed:
                continue
            self._changed = False
            event = c.Event(kind="stats", ts=c.now(), data=self.snapshot())
            try:
                await bus.publish_event(c.evt_proxy("stats"), event)
            except SparkError as exc:
                log.info("proxy: stats not published (%s)", exc.code)
