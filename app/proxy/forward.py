"""The streaming passthrough: one request to one upstream, its bytes relayed as they arrive.

Bodies are not re-encoded: the request bytes go up as received (an upload is streamed, never
held whole), the response bytes come back chunk by chunk as the upstream sends them (no
decompression either). A JSON body to an ``http://`` upstream goes through the lean client
(``upstream.py``); uploads and ``https://`` through one aiohttp session. Both keep a keep-alive
pool per upstream origin (CPU per request here: httpx 1.5 ms, aiohttp 0.25 ms, the lean client
a fraction of that: see docs/proxy.md). A client that goes away closes the upstream
connection, which is how vLLM learns to stop generating.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from litestar import Request, Response
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import HTTPResponseBodyEvent, Receive, Send

from app.config import Settings
from app.proxy import upstream
from app.proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnreachable

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "date", "server",
    }
)  # fmt: skip
DROP_RAW = frozenset(name.encode() for name in HOP_BY_HOP | {"expect"})
"""Not passed on by the lean client (it sends the whole body at once: no 100-continue)."""
CONNECT_TIMEOUT_S = 10.0
TAIL_BYTES = 2048
"""How much of a response's end is kept to read the ``usage`` the upstream reports."""

ChunkTransform = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
"""Rewrites a response stream chunk by chunk (the redaction gateway's seam)."""
Done = Callable[[bool, float | None, bytes], None]
"""Called once when a relay ends: (ok, seconds to first byte, tail of the body)."""
T = TypeVar("T")
UpstreamResponse = aiohttp.ClientResponse | upstream.Response
"""An upstream's answer, body unread: from the lean client (JSON to ``http://``) or aiohttp."""
BROKEN = (aiohttp.ClientError, upstream.UpstreamError, TimeoutError)
"""What an upstream that broke off raises."""


class ClientGone(ProxyError):
    """The client closed the connection before the upstream answered."""

    code = "CLIENT_CLOSED"
    status = 499


def new_client(settings: Settings) -> aiohttp.ClientSession:
    """The upstream client (call inside the running loop): generous pools, long reads
    (generation), quick connects, bodies passed through as they are."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60.0),
        cookie_jar=aiohttp.DummyCookieJar(),  # one client's upstream cookies never reach another
        timeout=aiohttp.ClientTimeout(
            total=None, connect=CONNECT_TIMEOUT_S, sock_read=settings.proxy_timeout_s
        ),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        trust_env=False,
    )


def new_lean_client(settings: Settings) -> upstream.Client:
    """The hot path's client (JSON bodies to ``http://`` upstreams), same timeouts."""
    return upstream.Client(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=settings.proxy_timeout_s)


def _keeps_token(request: Request[Any, Any, Any]) -> bool:
    """While the front checks API tokens, ``Authorization`` carries one of ours: it stops here
    (an upstream never sees a spark-control token). Without tokens it passes, so a client may
    still send a model server's own ``--api-key``."""
    access = request.app.state.get("access")
    return access is not None and access.required


def upstream_headers(request: Request[Any, Any, Any], length: int | None) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones (and our token, see ``_keeps_token``);
    ``length`` when the body's size is known."""
    drop = HOP_BY_HOP | ({"authorization"} if _keeps_token(request) else set())
    headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
    if length is not None:
        headers["content-length"] = str(length)
    return headers


def raw_upstream_headers(request: Request[Any, Any, Any]) -> list[tuple[bytes, bytes]]:
    """``upstream_headers`` as the ASGI server gave them (lower-case byte names, nothing
    decoded); the lean client adds Host and Content-Length."""
    raw = request.scope["headers"]
    if _keeps_token(request):
        return [(k, v) for k, v in raw if k not in DROP_RAW and k != b"authorization"]
    return [(k, v) for k, v in raw if k not in DROP_RAW]


def response_headers(resp: UpstreamResponse) -> dict[str, str]:
    headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
    if "content-length" in resp.headers and "content-encoding" not in resp.headers:
        headers["content-length"] = resp.headers["content-length"]
    return headers


async def _disconnected(request: Request[Any, Any, Any]) -> None:
    """Return when the client disconnects (call only once the request body is read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def watch_client(request: Request[Any, Any, Any], work: Awaitable[T]) -> T:
    """Await ``work`` unless the client disconnects first (then ``work`` is cancelled and
    ClientGone raised). Only for requests whose body has been read. ``work`` runs in this
    task; one watcher task cancels it if the client leaves (no second task, no ``wait``)."""
    task = asyncio.current_task()
    assert task is not None
    watching, left = True, False

    def client_left(g: asyncio.Future[None]) -> None:
        nonlocal left
        if watching and not g.cancelled():
            g.exception()  # retrieved: a receive that broke counts as the client gone
            left = True
            task.cancel()

    gone = asyncio.ensure_future(_disconnected(request))
    gone.add_done_callback(client_left)
    try:
        result = await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from outside, not by the client leaving
        task.uncancel()
        raise ClientGone("client closed the connection") from None
    finally:
        watching = False
        gone.cancel()
    if left:  # the work swallowed the cancel and finished: its answer is passed on
        task.uncancel()
    return result


async def open_upstream(
    client: aiohttp.ClientSession,
    lean: upstream.Client | None,
    request: Request[Any, Any, Any],
    url: str,
    content: bytes | AsyncIterable[bytes],
    *,
    length: int | None,
    watch: bool,
) -> UpstreamResponse:
    """Send the request and return the upstream's response with its body unread (a JSON body
    to an ``http://`` upstream through ``lean``, anything else through aiohttp).
    Unreachable → 502, no answer within the timeout → 504, client gone → ClientGone."""
    query: bytes = request.scope.get("query_string", b"")
    target = f"{url}?{query.decode('latin-1')}" if query else url
    sending: Awaitable[UpstreamResponse]
    if lean is not None and isinstance(content, bytes) and url.startswith("http://"):
        sending = lean.request(request.method, target, raw_upstream_headers(request), content)
    else:
        sending = client.request(
            request.method, target, data=content, headers=upstream_headers(request, length),
            allow_redirects=False,
        )  # fmt: skip
    try:
        return await (watch_client(request, sending) if watch else sending)
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {_origin(url)} did not answer in time") from exc
    except (aiohttp.ClientError, upstream.UpstreamError) as exc:
        raise UpstreamUnreachable(f"upstream {_origin(url)} unreachable") from exc


def _origin(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


class Relay:
    """The response body as an async iterator of the upstream's chunks. Cleanup (free or close
    the upstream connection, report the figures) runs exactly once, however it ends:
    completion, an upstream error, a client disconnect, or never being iterated at all."""

    def __init__(self, resp: UpstreamResponse, started: float, done: Done):
        self._resp = resp
        self._chunks = resp.content.iter_any()
        self._started = started
        self._done = done
        self._first: float | None = None
        self._tail = b""
        self._closed = False
        self._finalizer = weakref.finalize(self, _orphaned, resp, done)

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self.close(ok=True)
            raise
        except BROKEN:  # the upstream broke off mid-body
            self.close(ok=False)
            raise StopAsyncIteration from None
        except BaseException:  # cancelled: the client went away
            self.close(ok=False)
            raise
        if self._first is None:
            self._first = time.perf_counter() - self._started
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]
        return chunk

    @property
    def complete(self) -> bool:
        """The upstream's body has ended and every byte of it was handed out."""
        return self._resp.content.at_eof()

    def close(self, *, ok: bool) -> None:
        """Once: a finished body frees its connection for reuse, anything else closes it
        (the upstream sees the disconnect and stops)."""
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        if ok:
            self._resp.release()
        else:
            self._resp.close()
        self._done(ok, self._first, self._tail)

    async def aclose(self) -> None:
        self.close(ok=False)


def _orphaned(resp: UpstreamResponse, done: Done) -> None:
    """A relay dropped without being iterated: free its connection and its claims."""
    resp.close()
    done(False, None, b"")


WHOLE_BODY_MAX = 1024 * 1024


def complete_body(resp: UpstreamResponse) -> bool:
    """A small body the upstream sent with a fixed length (a finished JSON answer, never an
    event stream): read whole and answered in one piece, which skips the cost of a streamed
    response. Its bytes are already on the wire, so nothing waits on generation."""
    length = resp.content_length
    return (
        length is not None
        and length <= WHOLE_BODY_MAX
        and "text/event-stream" not in resp.headers.get("content-type", "")
    )


async def whole_response(resp: UpstreamResponse, started: float, done: Done) -> Response[bytes]:
    try:
        body = await resp.read()
    except BROKEN as exc:
        resp.close()
        done(False, None, b"")
        raise UpstreamUnreachable("upstream broke off its answer") from exc
    except BaseException:
        resp.close()
        done(False, None, b"")
        raise
    resp.release()
    done(True, time.perf_counter() - started, body[-TAIL_BYTES:])
    headers = response_headers(resp)
    headers.pop("content-length", None)  # set again from the body
    media = headers.pop("content-type", None) or "application/octet-stream"
    return Response(body, status_code=resp.status, headers=headers, media_type=media)


class _RelayASGI(ASGIStreamingResponse):
    """Litestar's streaming response with the disconnect watch on plain asyncio tasks (its
    own uses an anyio task group, a measurable share of the proxy's added latency)."""

    __slots__ = ()

    async def send_body(self, send: Send, receive: Receive) -> None:
        """Relay in this task; one watcher task cancels it if the client disconnects."""
        task = asyncio.current_task()
        assert task is not None
        relaying = True

        def client_left(g: asyncio.Future[None]) -> None:
            if relaying and not g.cancelled():
                task.cancel()

        gone = asyncio.ensure_future(_until_disconnect(receive))
        gone.add_done_callback(client_left)
        try:
            await self._relay(send)
        except asyncio.CancelledError:
            if not (gone.done() and not gone.cancelled()):
                raise  # cancelled from outside, not by the client leaving
            task.uncancel()  # the client left: the relay is closed, nothing more to send
        finally:
            relaying = False
            gone.cancel()

    async def _relay(self, send: Send) -> None:
        """Litestar's ``_stream``, except that a chunk that ends the upstream's body goes out
        as the last one (one write fewer than a separate empty terminator)."""
        relay = self.iterator if isinstance(self.iterator, Relay) else None
        async for chunk in self.iterator:
            last = relay is not None and relay.complete
            event: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": chunk if isinstance(chunk, bytes) else chunk.encode(self.encoding),
                "more_body": not last,
            }
            await send(event)
            if last:
                assert relay is not None
                relay.close(ok=True)
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class RelayStream(Stream):
    """A ``Stream`` answered by :class:`_RelayASGI`."""

    def to_asgi_response(self, *args: Any, **kwargs: Any) -> ASGIResponse:
        response = super().to_asgi_response(*args, **kwargs)
        response.__class__ = _RelayASGI
        return response


def stream_response(
    resp: UpstreamResponse,
    body: AsyncIterable[bytes],
    *,
    status: int | None = None,
    keep_length: bool = True,
) -> Stream:
    """A Litestar streaming response with the upstream's status and headers
    (``keep_length`` False when a transform may change the body's size)."""
    headers = response_headers(resp)
    if not keep_length:
        headers.pop("content-length", None)
    media = headers.pop("content-type", None) or "application/octet-stream"
    return RelayStream(body, status_code=status or resp.status, headers=headers, media_type=media)
