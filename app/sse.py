"""Server-Sent Events: the response every stream uses, and a job's events replayed from
JetStream, then live, ending after the final event. The SSE id is the event's stream sequence,
so ``Last-Event-ID`` resumes."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from litestar.background_tasks import BackgroundTask
from litestar.response import ServerSentEventMessage, Stream

from app import contracts as c
from app import jobs
from app.bus import Bus

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SEP = "\r\n"


def encode_message(msg: ServerSentEventMessage) -> bytes:
    """The wire form of one message, as Litestar writes it (CRLF lines, a blank line after)."""
    lines = []
    if msg.comment is not None:
        lines += [f": {part}" for part in _LINE_BREAK.split(str(msg.comment))]
    if msg.id is not None:
        lines.append(_LINE_BREAK.sub("", f"id: {msg.id}"))
    if msg.event is not None:
        lines.append(_LINE_BREAK.sub("", f"event: {msg.event}"))
    if msg.data is not None:
        data = msg.data.decode() if isinstance(msg.data, bytes) else str(msg.data)
        lines += [f"data: {part}" for part in _LINE_BREAK.split(data)]
    if msg.retry is not None:
        lines.append(f"retry: {msg.retry}")
    lines += ["", ""]
    return _SEP.join(lines).encode()


async def _encoded(messages: AsyncIterable[ServerSentEventMessage]) -> AsyncIterator[bytes]:
    async for msg in messages:
        yield encode_message(msg)


def event_stream(
    messages: AsyncIterable[ServerSentEventMessage], background: BackgroundTask | None = None
) -> Stream:
    """A ``text/event-stream`` response. Litestar's ServerSentEvent would do, but it starts
    every stream with a hop through a worker thread (its empty preamble iterator is sync);
    this writes the same bytes from the event loop."""
    return Stream(
        _encoded(messages),
        media_type="text/event-stream",
        background=background,
        headers={"Cache-Control": "no-cache", "Connection": "keep-alive",
                 "X-Accel-Buffering": "no"},
    )  # fmt: skip


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
