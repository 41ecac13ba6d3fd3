"""Big answers on the bus: an answer over the server's max payload is sent as several messages
on the reply subject and reassembled by the requester (``contracts.CHUNK_HEADER``…).

A 10,000-part answer is about 4 MB and NATS's default max payload is 1 MB; the server's limit
is never raised. A small answer is one message, so ``nats req`` sees it whole.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib

import nats.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from app import contracts as c
from app.errors import BusUnavailable, SparkError

HEADROOM = 4096
"""Bytes of a message kept for headers and protocol overhead."""


def split(body: bytes, max_payload: int) -> list[tuple[dict[str, str], bytes]]:
    """Messages (headers, data) carrying ``body``; the last has the sha256 of the whole."""
    size = max(1024, max_payload - HEADROOM)
    pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    n = str(len(pieces))
    out = [({c.CHUNK_HEADER: str(i), c.CHUNKS_HEADER: n}, piece) for i, piece in enumerate(pieces)]
    out[-1][0][c.CHUNK_SHA_HEADER] = hashlib.sha256(body).hexdigest()
    return out


async def request(nc: NatsClient, subject: str, body: bytes, wait_s: float) -> tuple[bytes, bool]:
    """Send a request; (the reassembled answer, whether it is an error reply — one message with
    ``Nats-Service-Error``). BusUnavailable when no signer answers or in time."""
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        await queue.put(msg)

    sub = await nc.subscribe(inbox, cb=on_msg)
    try:
        await nc.publish(subject, body, reply=inbox)
        async with asyncio.timeout(wait_s):
            return await _collect(queue)
    except TimeoutError as exc:
        raise BusUnavailable("the blob signer did not answer in time") from exc
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def _collect(queue: asyncio.Queue[Msg]) -> tuple[bytes, bool]:
    first = await queue.get()
    headers = first.headers or {}
    if headers.get("Status") == "503":
        raise BusUnavailable("no blob signer is running", code="SIGNER_UNAVAILABLE")
    if headers.get("Nats-Service-Error") or c.CHUNKS_HEADER not in headers:
        return first.data, bool(headers.get("Nats-Service-Error"))
    total = int(headers[c.CHUNKS_HEADER])
    pieces, last = [first.data], first
    while len(pieces) < total:
        last = await queue.get()
        index = int((last.headers or {}).get(c.CHUNK_HEADER, -1))
        if index != len(pieces):
            raise SparkError("blob signer answer arrived out of order", code="BAD_CHUNKS")
        pieces.append(last.data)
    body = b"".join(pieces)
    want = (last.headers or {}).get(c.CHUNK_SHA_HEADER)
    if want != hashlib.sha256(body).hexdigest():
        raise SparkError("blob signer answer damaged in transit", code="BAD_CHUNKS")
    return body, False
