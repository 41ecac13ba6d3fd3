"""The streaming passthrough: one request to one upstream, its bytes relayed as they arrive.

Bodies are not re-encoded: the request bytes go up as received (an upload is streamed, never
held whole), the response bytes come back chunk by chunk as the upstream sends them (no
decompression either). One aiohttp session keeps a keep-alive pool per upstream origin (httpx
measured 1.5 ms of CPU per request here, aiohttp 0.25 ms: see docs/proxy.md). A client that
goes away closes the upstream connection, which is how vLLM learns to stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import aiohttp
from litestar import Request, Response
from litestar.response import Stream
from litestar.response.base import ASGIResponse
from litestar.response.streaming import ASGIStreamingResponse
from litestar.types import Receive, Send

from app.config import Settings
from app.proxy.errors import ProxyError, UpstreamTimeout, UpstreamUnreachable

HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te",
        "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
        "date", "server",
    }
)  # fmt: skip
TAIL_BYTES = 2048
"""How much of a response's end is kept to read the ``usage`` the upstream reports."""

ChunkTransform = Callable[[AsyncIterator[bytes]], AsyncIterator[bytes]]
"""Rewrites a response stream chunk by chunk (the redaction gateway's seam)."""
Done = Callable[[bool, float | None, bytes], None]
"""Called once when a relay ends: (ok, seconds to first byte, tail of the body)."""


class ClientGone(ProxyError):
    """The client closed the connection before the upstream answered."""

    code = "CLIENT_CLOSED"
    status = 499


def new_client(settings: Settings) -> aiohttp.ClientSession:
    """The upstream client (call inside the running loop): generous pools, long reads
    (generation), quick connects, bodies passed through as they are."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=1024, limit_per_host=0, keepalive_timeout=60.0),
        timeout=aiohttp.ClientTimeout(total=None, connect=10.0, sock_read=settings.proxy_timeout_s),
        auto_decompress=False,
        skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type"),
        trust_env=False,
    )


def upstream_headers(request: Request[Any, Any, Any], length: int | None) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones; ``length`` when the body's size is known.
    While the front checks API tokens, ``Authorization`` carries one of ours: it stops here
    (an upstream never sees a spark-control token). Without tokens it passes, so a client may
    still send a model server's own ``--api-key``."""
    access = request.app.state.get("access")
    drop = HOP_BY_HOP | ({"authorization"} if access is not None and access.required else set())
    headers = {k: v for k, v in request.headers.items() if k.lower() not in drop}
    if length is not None:
        headers["content-length"] = str(length)
    return headers


def response_headers(resp: aiohttp.ClientResponse) -> dict[str, str]:
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


async def watch_client(request: Request[Any, Any, Any], work: Any) -> Any:
    """Await ``work`` unless the client disconnects first (then ``work`` is cancelled and
    ClientGone raised). Only for requests whose body has been read."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    raise ClientGone("client closed the connection")


async def open_upstream(
    client: aiohttp.ClientSession,
    request: Request[Any, Any, Any],
    url: str,
    content: bytes | AsyncIterable[bytes],
    *,
    length: int | None,
    watch: bool,
) -> aiohttp.ClientResponse:
    """Send the request and return the upstream's response with its body unread.
    Unreachable → 502, no answer within the timeout → 504, client gone → ClientGone."""
    query = request.url.query
    sending = client.request(
        request.method, f"{url}?{query}" if query else url, data=content,
        headers=upstream_headers(request, length), allow_redirects=False,
    )  # fmt: skip
    try:
        return await (watch_client(request, sending) if watch else sending)
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise UpstreamTimeout(f"upstream {_origin(url)} did not answer in time") from exc
    except aiohttp.ClientError as exc:
        raise UpstreamUnreachable(f"upstream {_origin(url)} unreachable") from exc


def _origin(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


class Relay:
    """The response body as an async iterator of the upstream's chunks. Cleanup (free or close
    the upstream connection, report the figures) runs exactly once, however it ends:
    completion, an upstream error, a client disconnect, or never being iterated at all."""

    def __init__(self, resp: aiohttp.ClientResponse, started: float, done: Done):
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
        except (aiohttp.ClientError, TimeoutError):  # the upstream broke off mid-body
            self.close(ok=False)
            raise StopAsyncIteration from None
        except BaseException:  # cancelled: the client went away
            self.close(ok=False)
            raise
        if self._first is None:
            self._first = time.perf_counter() - self._started
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]
        return chunk

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


def _orphaned(resp: aiohttp.ClientResponse, done: Done) -> None:
    """A relay dropped without being iterated: free its connection and its claims."""
    resp.close()
    done(False, None, b"")


WHOLE_BODY_MAX = 1024 * 1024


def complete_body(resp: aiohttp.ClientResponse) -> bool:
    """A small body the upstream sent with a fixed length (a finished JSON answer, never an
    event stream): read whole and answered in one piece, which skips the cost of a streamed
    response. Its bytes are already on the wire, so nothing waits on generation."""
    length = resp.content_length
    return (
        length is not None
        and length <= WHOLE_BODY_MAX
        and "text/event-stream" not in resp.headers.get("content-type", "")
    )


async def whole_response(
    resp: aiohttp.ClientResponse, started: float, done: Done
) -> Response[bytes]:
    try:
        body = await resp.read()
    except (aiohttp.ClientError, TimeoutError) as exc:
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
            await self._stream(send)
        except asyncio.CancelledError:
            if not (gone.done() and not gone.cancelled()):
                raise  # cancelled from outside, not by the client leaving
            task.uncancel()  # the client left: the relay is closed, nothing more to send
        finally:
            relaying = False
            gone.cancel()


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
    resp: aiohttp.ClientResponse,
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
