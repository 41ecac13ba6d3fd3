"""A job's events as Server-Sent Events: replayed from JetStream, then live, ending after the
final event. The SSE id is the event's stream sequence, so ``Last-Event-ID`` resumes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from litestar.response import ServerSentEventMessage

from app import contracts as c
from app import jobs
from app.bus import Bus


def last_event_id(value: str | None) -> int:
    """``Last-Event-ID`` as a stream sequence; anything else starts from the beginning."""
    try:
        return max(0, int(value or 0))
    except ValueError:
        return 0


async def job_stream(
    bus: Bus,
    job_id: str,
    after_seq: int,
    render: Callable[[int, c.Event], tuple[str, str]],
    end_event: str | None = None,
    sub: Any = None,
) -> AsyncIterator[ServerSentEventMessage]:
    """Yield one SSE message per event; ``render`` gives (event name, data). ``sub``: the
    subscription from ``open_job`` (else one is opened here)."""
    async for seq, event in bus.job_events(job_id, after_seq, sub=sub):
        name, data = render(seq, event)
        yield ServerSentEventMessage(data=data, event=name, id=seq)
        if event.kind in c.FINAL_KINDS and end_event:
            yield ServerSentEventMessage(data="", event=end_event, id=seq)


async def open_job(bus: Bus, job_id: str, after_seq: int) -> Any:
    """Check the job exists (404 otherwise) while its event subscription opens: one
    round-trip of waiting instead of two before the first event."""
    sub_task = asyncio.ensure_future(bus.open_job_events(job_id, after_seq))
    try:
        await jobs.get(bus, job_id)
    except BaseException:
        sub_task.cancel()
        with contextlib.suppress(BaseException):
            await (await sub_task).unsubscribe()
        raise
    return await sub_task


def as_json(seq: int, event: c.Event) -> tuple[str, str]:
    return event.kind, c.encode(event).decode()
