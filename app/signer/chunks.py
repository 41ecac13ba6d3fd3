"""Big answers on the bus: an answer is sent as one or more messages on the reply subject,
each at most the server's max payload, and reassembled (or streamed on) by the requester.

Every message carries ``Spark-Chunk: <i>`` (0-based); the last also ``Spark-Chunks: <n>`` and
``Spark-Bytes``, the whole body's length (NATS over TCP keeps each message intact and in order;
the index and the totals catch a message dropped to a slow consumer). Headers the sender adds
(``Spark-Answer: compact``, app/signer/compact.py) are on every message. The sender publishes each
chunk as soon as it is full, so a 10,000-part answer (about 4 MB; NATS's default max payload is
1 MB, never raised here) starts moving while its later parts are still being signed. A small
answer is one message, so ``nats req`` sees it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app import contracts as c
from app.errors import BusUnavailable, SparkError

HEADROOM = 4096
"""Bytes of a message kept for headers and protocol overhead."""

Publish = Callable[[bytes, dict[str, str]], Awaitable[None]]


class ChunkWriter:
    """Cuts a body written piece by piece into messages of at most ``max_payload``."""

    def __init__(
        self, publish: Publish, max_payload: int, headers: dict[str, str] | None = None
    ) -> None:
        self._publish = publish
        self._headers = headers or {}  # on every message (e.g. the answer's form)
        self._size = max(1024, max_payload - HEADROOM)
        self._buf = bytearray()
        self._index = self._bytes = 0

    async def write(self, piece: bytes) -> None:
        self._bytes += len(piece)
        self._buf += piece
        while len(self._buf) >= self._size:
            chunk = bytes(self._buf[: self._size])
            del self._buf[: self._size]
            await self._publish(chunk, {**self._headers, c.CHUNK_HEADER: str(self._index)})
            self._index += 1
            await asyncio.sleep(0)  # let the connection's flusher send it now

    async def close(self) -> None:
        """Send what is left as the last message (possibly empty), with the totals."""
        headers = {
            **self._headers,
            c.CHUNK_HEADER: str(self._index),
            c.CHUNKS_HEADER: str(self._index + 1),
            c.CHUNK_BYTES_HEADER: str(self._bytes),
        }
        await self._publish(bytes(self._buf), headers)
        self._buf.clear()


class Reply:
    """A signer's answer as it arrives: ``error`` (one message) or the body's chunks."""

    def __init__(self, first: Msg, queue: asyncio.Queue[Msg], wait_s: float) -> None:
        self._first, self._queue, self._wait_s = first, queue, wait_s
        headers = first.headers or {}
        self.error: bytes | None = first.data if headers.get("Nats-Service-Error") else None
        self.compact = headers.get(c.ANSWER_HEADER) == c.ANSWER_COMPACT
        """The body is a compact answer (app/signer/compact.py), not the full JSON."""

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body's pieces in order; SparkError (BAD_CHUNKS) if one is missing or the total
        length is not what the sender said."""
        msg, index, size = self._first, 0, 0
        while True:
            headers = msg.headers or {}
            if index and headers.get("Nats-Service-Error"):
                raise SparkError("blob signer failed mid-answer", code="BAD_CHUNKS")
            if int(headers.get(c.CHUNK_HEADER, "0")) != index:
                raise SparkError("blob signer answer arrived out of order", code="BAD_CHUNKS")
            size += len(msg.data)
            yield msg.data
            if c.CHUNKS_HEADER in headers or c.CHUNK_HEADER not in headers:
                want = headers.get(c.CHUNK_BYTES_HEADER)
                if want is not None and int(want) != size:
                    raise SparkError("blob signer answer arrived incomplete", code="BAD_CHUNKS")
                return
            index += 1
            try:
                async with asyncio.timeout(self._wait_s):
                    msg = await self._queue.get()
            except TimeoutError as exc:
                raise BusUnavailable("the blob signer stopped answering") from exc

    async def body(self) -> bytes:
        return b"".join([piece async for piece in self.chunks()])


@contextlib.asynccontextmanager
async def request(
    nc: NatsClient,
    subject: str,
    body: bytes,
    wait_s: float,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Reply]:
    """Send a request (with ``headers``, if any) and yield its Reply once the first message is
    in; the subscription lives as long as the context. BusUnavailable when no signer answers,
    or not in time."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish(subject, body, reply=inbox, headers=headers)
        try:
            async with asyncio.timeout(wait_s):
                first = await queue.get()
        except TimeoutError as exc:
            raise BusUnavailable("the blob signer did not answer in time") from exc
        if (first.headers or {}).get("Status") == "503":
            raise BusUnavailable("no blob signer is running", code="SIGNER_UNAVAILABLE")
        yield Reply(first, queue, wait_s)
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
