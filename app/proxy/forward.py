"""The streaming passthrough: one request to one upstream, its bytes relayed as they arrive.

Bodies are not re-encoded: the request bytes go up as received (an upload is streamed, never
held whole), the response bytes come back chunk by chunk as the upstream sends them. One httpx
client keeps a keep-alive pool per upstream origin. A client that goes away closes the upstream
connection, which is how vLLM learns to stop generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

import anyio
import httpx
from litestar import Request
from litestar.response import Stream

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


def new_client(settings: Settings) -> httpx.AsyncClient:
    """The upstream client: generous pools, long reads (generation), quick connects."""
    long = settings.proxy_timeout_s
    return httpx.AsyncClient(
        timeout=httpx.Timeout(connect=10.0, read=long, write=long, pool=long),
        limits=httpx.Limits(
            max_connections=1024, max_keepalive_connections=256, keepalive_expiry=60.0
        ),
        follow_redirects=False,
        trust_env=False,
    )


def upstream_headers(request: Request[Any, Any, Any], length: int | None) -> dict[str, str]:
    """The client's headers minus hop-by-hop ones; ``length`` when the body's size is known."""
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    if length is not None:
        headers["content-length"] = str(length)
    return headers


def response_headers(resp: httpx.Response) -> dict[str, str]:
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


async def watch_client(request: Request[Any, Any, Any], work: asyncio.Future[Any] | Any) -> Any:
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
    client: httpx.AsyncClient,
    request: Request[Any, Any, Any],
    url: str,
    content: bytes | AsyncIterable[bytes],
    *,
    length: int | None,
    watch: bool,
) -> httpx.Response:
    """Send the request and return the upstream's response with its body unread.
    Unreachable → 502, no answer within the timeout → 504, client gone → ClientGone."""
    req = client.build_request(
        request.method, url, content=content, headers=upstream_headers(request, length),
        params=request.url.query or None,
    )  # fmt: skip
    try:
        sending = client.send(req, stream=True)
        return await (watch_client(request, sending) if watch else sending)
    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError,
            httpx.WriteError, httpx.ReadError) as exc:  # fmt: skip
        raise UpstreamUnreachable(f"upstream {_origin(url)} unreachable") from exc
    except httpx.TimeoutException as exc:
        raise UpstreamTimeout(f"upstream {_origin(url)} did not answer in time") from exc


def _origin(url: str) -> str:
    u = httpx.URL(url)
    return f"{u.host}:{u.port}" if u.port else u.host


class Relay:
    """The response body as an async iterator of the upstream's chunks. Cleanup (close the
    upstream connection, report the figures) runs exactly once, however it ends: completion,
    an upstream error, a client disconnect, or never being iterated at all."""

    def __init__(self, resp: httpx.Response, started: float, done: Done):
        self._resp = resp
        self._chunks = resp.aiter_raw()
        self._started = started
        self._done = done
        self._first: float | None = None
        self._tail = b""
        self._closed = False
        self._ok = False
        self._finalizer = weakref.finalize(self, _orphaned, resp, done)

    def __aiter__(self) -> Relay:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._chunks.__anext__()
        except StopAsyncIteration:
            self._ok = True
            await self.aclose()
            raise
        except httpx.HTTPError:  # the upstream broke off mid-body: end the response there
            await self.aclose()
            raise StopAsyncIteration from None
        except BaseException:  # cancelled: the client went away
            await self.aclose()
            raise
        if self._first is None:
            self._first = time.perf_counter() - self._started
        self._tail = (self._tail + chunk)[-TAIL_BYTES:]
        return chunk

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._finalizer.detach()
        with anyio.CancelScope(shield=True):
            await self._resp.aclose()
        self._done(self._ok, self._first, self._tail)


def _orphaned(resp: httpx.Response, done: Done) -> None:
    """A relay dropped without being iterated: free its connection and its claims."""
    done(False, None, b"")
    with contextlib.suppress(RuntimeError):
        asyncio.get_running_loop().create_task(resp.aclose())


def stream_response(
    resp: httpx.Response,
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
    return Stream(body, status_code=status or resp.status_code, headers=headers,
                  media_type=media)  # fmt: skip
