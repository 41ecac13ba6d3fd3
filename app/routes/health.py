"""Health over HTTP (the earlier dashboard's paths): endpoints, client reports, deep health,
connectivity history, live health events (SSE) and ``/metrics``. Thin: app/health.py and
app/metrics.py do the work."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import nats.errors
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.params import FromQuery
from litestar.response import ServerSentEventMessage, Stream

from app import contracts as c
from app import health, metrics
from app.routes.deps import bus_of, settings_of
from app.sse import event_stream

REPORT_LIMIT = 16 * 1024


@get("/api/endpoints")
async def endpoints(state: State) -> list[dict[str, Any]]:
    """Per endpoint: base_url, ready, loaded model, disabled, state."""
    return await health.endpoints(bus_of(state), settings_of(state), os.environ)


@post("/api/health-event", status_code=202, request_max_body_size=REPORT_LIMIT)
async def health_event(state: State, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """A client's report ``{service, ok, source?, error?, ms?}``: recorded, never a state."""
    body = await request.body()
    return await health.record_report(bus_of(state), settings_of(state), os.environ, body)


@get("/api/deep-health")
async def deep_health(state: State) -> dict[str, Any]:
    """The last synthetic probe per endpoint and its automatic restart state."""
    return await health.deep_health(bus_of(state), settings_of(state), os.environ)


@get("/api/connectivity")
async def connectivity(state: State, days: FromQuery[float] = 1.0) -> dict[str, Any]:
    """Transitions with down durations, outages, client reports and a per-day summary."""
    return await health.connectivity(bus_of(state), settings_of(state), days)


@get("/api/health/events")
async def health_events(state: State) -> Stream:
    """Live host and endpoint events as SSE (``event`` = ``<scope>.<name>.<kind>``, JSON data);
    for pages that redraw tiles without polling. Not replayed: read the state endpoints first."""
    bus = bus_of(state)
    subs = [await bus.nc.subscribe(f"{c.ROOT}.evt.{scope}.>") for scope in ("host", "service")]

    async def stream() -> AsyncIterator[ServerSentEventMessage]:
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1000)

        async def pump(sub: Any) -> None:
            async for msg in sub.messages:
                if not queue.full():
                    queue.put_nowait(msg)

        tasks = [asyncio.create_task(pump(s)) for s in subs]
        try:
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), 15)
                except TimeoutError:
                    yield ServerSentEventMessage(comment="keepalive")
                    continue
                scope, name, kind = msg.subject.split(".")[2:5]
                try:
                    event = c.decode_event(msg.data)
                except msgspec.DecodeError:
                    continue
                yield ServerSentEventMessage(
                    event=f"{scope}.{name}.{kind}", data=msgspec.json.encode(event).decode()
                )
        finally:
            for t in tasks:
                t.cancel()
            for s in subs:
                with contextlib.suppress(nats.errors.Error):
                    await s.unsubscribe()

    return event_stream(stream())


@get("/metrics", media_type=metrics.CONTENT_TYPE)
async def prometheus(state: State) -> Response[str]:
    """The fleet in Prometheus text format."""
    proxy = getattr(state, "proxy", None)
    text = await metrics.render(bus_of(state), settings_of(state), os.environ, proxy)
    return Response(text, media_type=metrics.CONTENT_TYPE)


ROUTES = [endpoints, health_event, deep_health, connectivity, health_events, prometheus]
