"""An hour of memory and GPU use per host, for the overview's sparklines.

Each web front keeps a bounded ring per configured host in memory, fed by one ordered
JetStream consumer on ``spark.evt.host.*.probed`` that starts an hour back in SPARK_EVT: so a
freshly started (or restarted) front draws the last hour at once, every replica draws the same
charts, and nothing new is stored anywhere (the events already are).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
from nats.js.api import ConsumerConfig, DeliverPolicy

from app import contracts as c
from app.bus import Bus

log = logging.getLogger(__name__)

WINDOW_S = 3600.0
MAX_SAMPLES = 720
"""Per host: one hour at a 5 s poll; a faster poll (or extra probes) keeps the newest 720."""
PROBED_FILTER = f"{c.ROOT}.evt.host.*.probed"


class Sample(msgspec.Struct, frozen=True):
    ts: float
    mem_pct: float | None
    gpu_pct: float | None


def sample_of(probe: Any, ts: float) -> Sample | None:
    """Memory used (% of total) and mean GPU utilisation (%) of a probe result dict."""
    if not isinstance(probe, dict):
        return None
    total, avail = probe.get("mem_total_bytes"), probe.get("mem_available_bytes")
    mem = None
    if isinstance(total, int | float) and isinstance(avail, int | float) and total > 0:
        mem = round(100.0 * (total - avail) / total, 2)
    utils = [g.get("utilization_pct") for g in probe.get("gpus") or [] if isinstance(g, dict)]
    nums = [float(u) for u in utils if isinstance(u, int | float)]
    gpu = round(sum(nums) / len(nums), 2) if nums else None
    return Sample(ts=ts, mem_pct=mem, gpu_pct=gpu)


class History:
    """Bounded rings of samples per host alias (only the configured ones)."""

    def __init__(self, aliases: Iterable[str], window_s: float = WINDOW_S) -> None:
        self.window_s = window_s
        self.rings: dict[str, deque[Sample]] = {a: deque(maxlen=MAX_SAMPLES) for a in aliases}
        self.charts: dict[tuple[str, str], tuple[Any, Any]] = {}
        """Drawn charts by (host, field) with what they were drawn from (dashboard's cache)."""

    def add(self, host: str, sample: Sample) -> bool:
        ring = self.rings.get(host)
        if ring is None or (ring and sample.ts < ring[-1].ts):
            return False
        ring.append(sample)
        while ring and ring[0].ts < sample.ts - self.window_s:
            ring.popleft()
        return True

    def series(self, host: str, field: str, since: float) -> list[tuple[float, float | None]]:
        return [(s.ts, getattr(s, field)) for s in self.rings.get(host, ()) if s.ts >= since]


async def follow(bus: Bus, history: History, window_s: float = WINDOW_S) -> None:
    """Replay the last ``window_s`` of probed events, then keep up live (until cancelled):
    one ordered consumer, so replay and live neither overlap nor leave a gap."""
    start = datetime.fromtimestamp(c.now() - window_s, UTC)
    config = ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
    while True:
        try:
            sub = await bus.js.subscribe(
                PROBED_FILTER, stream=c.EVT_STREAM, ordered_consumer=True, config=config
            )
            break
        except (TimeoutError, nats.errors.Error) as exc:
            log.warning("host history not followed yet: %s", exc)
            await asyncio.sleep(5)
    try:
        async for msg in sub.messages:
            with contextlib.suppress(msgspec.DecodeError, IndexError):
                event = c.decode_event(msg.data)
                sample = sample_of(event.data, event.ts)
                if sample is not None:
                    history.add(msg.subject.split(".")[3], sample)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
