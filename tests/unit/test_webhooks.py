"""Webhook signing and delivery against a real local HTTP receiver (asyncio, port 0)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest

from app import webhooks

SECRET = "s3cret-webhook-key"
EVENT = {"event": "swap_complete", "model": "qwen3", "host": "spark1", "duration_s": 42.5}


def test_signature_matches_the_hmac_reference() -> None:
    body = json.dumps(EVENT).encode()
    expected = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert webhooks.sign(body, SECRET) == f"sha256={expected}"
    assert webhooks.verify(body, SECRET, f"sha256={expected}")
    assert not webhooks.verify(body + b" ", SECRET, f"sha256={expected}")
    assert not webhooks.verify(body, "other", f"sha256={expected}")
    assert not webhooks.verify(body, SECRET, None)


def test_signature_known_vector() -> None:
    # RFC 4231, test case 2
    assert webhooks.sign(b"what do ya want for nothing?", "Jefe") == (
        "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@dataclass
class Receiver:
    """A minimal HTTP/1.1 server: answers the statuses in turn (the last one repeats) and keeps
    each request's headers and body, and whether its signature verified."""

    statuses: list[int]
    requests: list[tuple[dict[str, str], bytes, bool]] = field(default_factory=list)
    url: str = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        ok = webhooks.verify(body, SECRET, headers.get("x-spark-signature"))
        self.requests.append((headers, body, ok))
        status = self.statuses[min(len(self.requests), len(self.statuses)) - 1]
        writer.write(
            f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()


@pytest.fixture
async def receiver(request: pytest.FixtureRequest) -> AsyncIterator[Receiver]:
    rx = Receiver(statuses=list(request.param))
    server = await asyncio.start_server(rx.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    rx.url = f"http://127.0.0.1:{port}/hooks/swap?key=abc"
    async with server:
        yield rx


@pytest.mark.parametrize("receiver", [[503, 503, 200]], indirect=True)
async def test_retries_5xx_then_delivers_signed(receiver: Receiver) -> None:
    out = await webhooks.deliver(receiver.url, EVENT, SECRET, attempts=5, backoff_s=0.01)
    assert out == webhooks.Delivery(outcome="delivered", attempts=3, status=200)
    assert out.delivered
    assert len(receiver.requests) == 3
    for headers, body, ok in receiver.requests:
        assert ok, "the receiver could not verify the signature"
        assert json.loads(body) == EVENT
        assert headers["content-type"] == "application/json"
        assert headers["x-spark-event"] == "swap_complete"
    assert len({body for _, body, _ in receiver.requests}) == 1  # same bytes every attempt


@pytest.mark.parametrize("receiver", [[500]], indirect=True)
async def test_gives_up_after_the_attempts_with_the_last_status(receiver: Receiver) -> None:
    out = await webhooks.deliver(receiver.url, EVENT, SECRET, attempts=3, backoff_s=0.01)
    assert out == webhooks.Delivery(outcome="failed", attempts=3, status=500, error="HTTP 500")
    assert len(receiver.requests) == 3


@pytest.mark.parametrize("receiver", [[400]], indirect=True)
async def test_client_error_is_not_retried(receiver: Receiver) -> None:
    event = {"event": "swap_failed", "model": "qwen3", "error": "engine init failed"}
    out = await webhooks.deliver(receiver.url, event, SECRET, attempts=5, backoff_s=0.01)
    assert (out.outcome, out.attempts, out.status) == ("failed", 1, 400)
    assert receiver.requests[0][2] is True


async def test_receiver_down_fails_after_n_attempts_within_the_backoff_budget(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://user:pw@127.0.0.1:{port}/hook"
    caplog.set_level("DEBUG")
    started = time.monotonic()
    out = await webhooks.deliver(url, EVENT, SECRET, attempts=4, backoff_s=0.02)
    elapsed = time.monotonic() - started
    assert out == webhooks.Delivery(outcome="failed", attempts=4, status=None, error="ConnectError")
    assert 0.02 + 0.04 + 0.08 <= elapsed < 2.0  # waited between tries, not after the last
    for text in (repr(out), caplog.text):
        assert SECRET not in text and "pw" not in text and "/hook" not in text


async def test_uses_a_given_client_and_refuses_unknown_events() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        out = await webhooks.deliver("http://hooks.test/x", EVENT, SECRET, client=client)
    assert (out.outcome, out.attempts, out.status) == ("delivered", 1, 204)
    assert webhooks.verify(seen[0].content, SECRET, seen[0].headers["x-spark-signature"])
    with pytest.raises(ValueError, match="event"):
        await webhooks.deliver("http://hooks.test/x", {"event": "nope"}, SECRET, client=client)
