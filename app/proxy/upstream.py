"""A lean HTTP/1.1 client for the proxy's hot path (a JSON body to a plain ``http://``
upstream): the request goes out in one write, the answer is parsed by httptools (uvicorn's
parser), connections are kept alive in a pool per origin. aiohttp spent ~0.25 ms of CPU per
request here, most of it in layers a proxy does not use (cookies, redirects, traces, URL
objects); this keeps only what the relay needs. Uploads and ``https://`` stay on aiohttp.

The response mimics the part of ``aiohttp.ClientResponse`` the relay reads (``status``,
``headers``, ``content_length``, ``content.iter_any()``/``at_eof()``, ``read``, ``release``,
``close``), so both kinds go through the same relay.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import cast

import httptools
from multidict import CIMultiDict

IDLE_S = 60.0
"""A pooled connection unused this long is closed rather than reused."""
COPY_MAX = 256 * 1024
"""A request body up to this size is joined to its head (one buffer is the fastest write)."""
HIGH_WATER = 256 * 1024
"""Unread body bytes above this pause reading from the upstream (a slow client slows it)."""


class UpstreamError(Exception):
    """The upstream could not be reached, broke the connection or sent something unparsable."""


class UpstreamTimeoutError(UpstreamError, TimeoutError):
    """No connection, or no bytes from the upstream, within the timeout."""


class Body:
    """The response body as the upstream sends it: ``iter_any`` yields what has arrived."""

    def __init__(self, conn: _Connection):
        self._conn = conn
        self._chunks: list[bytes] = []
        self._size = 0
        self._eof = False

    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    def iter_any(self) -> Body:
        return self

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes:
        while not self._chunks and not self._eof:
            await self._conn.wait_data()
        if not self._chunks:
            raise StopAsyncIteration
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        if self._size > HIGH_WATER:
            self._conn.resume_reading()
        self._size = 0
        return data

    def _feed(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause_reading()


class Response:
    def __init__(self, conn: _Connection, status: int, headers: CIMultiDict[str]):
        self._conn = conn
        self.status = status
        self.headers = headers
        self.content = Body(conn)

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        return b"".join([chunk async for chunk in self.content])

    def release(self) -> None:
        """Back to the pool when the body was read to its end, else the connection closes."""
        self._conn.finish(reuse=self.content.at_eof())

    def close(self) -> None:
        self._conn.finish(reuse=False)


class _Connection(asyncio.Protocol):
    """One keep-alive connection: the protocol, the parser callbacks and the waits on them."""

    def __init__(self, client: Client, origin: tuple[str, int], read_timeout: float | None):
        self.client, self.origin, self.read_timeout = client, origin, read_timeout
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.lost = False
        self.error: Exception | None = None
        self.waiter: asyncio.Future[None] | None = None
        self.response: Response | None = None
        self.received = False
        self.complete = False
        self.by_close = False
        self.keep_alive = False
        self.idle_since = 0.0
        self._headers: list[tuple[str, str]] = []
        self._paused = False

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"unparsable answer ({type(exc).__name__})"))
            self.finish(reuse=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.client.forget(self)
        if self.by_close and self.response is not None and not self.complete:
            self.on_message_complete()  # a body delimited by the end of the connection
        elif not self.complete:
            self._fail(UpstreamError("the upstream closed the connection"))

    # --- httptools callbacks ------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:  # 100 Continue and friends: the real answer follows
            self._headers = []
            return
        headers: CIMultiDict[str] = CIMultiDict(self._headers)
        self.keep_alive = self.parser.should_keep_alive()  # known here, not after the end
        self.by_close = "content-length" not in headers and "transfer-encoding" not in headers
        self.response = Response(self, status, headers)
        self._wake()

    def on_body(self, body: bytes) -> None:
        assert self.response is not None
        self.response.content._feed(body)
        self._wake()

    def on_message_complete(self) -> None:
        if self.response is None:
            return  # the end of a 1xx
        self.complete = True
        self.response.content._eof = True
        self._wake()

    # --- waits ----------------------------------------------------------------------------------

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: Exception) -> None:
        self.error = exc
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    async def _wait(self) -> None:
        if self.error is not None:
            raise self.error
        self.waiter = waiter = self.loop.create_future()
        timer = (
            self.loop.call_later(self.read_timeout, self._timed_out, waiter)
            if self.read_timeout
            else None
        )
        try:
            await waiter
        finally:
            self.waiter = None
            if timer is not None:
                timer.cancel()

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        if not waiter.done():
            waiter.set_exception(UpstreamTimeoutError("the upstream did not answer in time"))

    async def wait_response(self) -> Response:
        while self.response is None:
            await self._wait()
        return self.response

    async def wait_data(self) -> None:
        if not self.complete:
            await self._wait()

    def pause_reading(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self.lost:
            self._paused = False
            self.transport.resume_reading()

    # --- reuse ----------------------------------------------------------------------------------

    def finish(self, *, reuse: bool) -> None:
        """The request is over: back to the pool (a complete, keep-alive answer) or closed."""
        if reuse and self.complete and not self.lost and self.keep_alive:
            self.response, self.complete, self.received = None, False, False
            self._headers = []
            self.resume_reading()
            self.client.put(self)
        elif self.transport is not None and not self.transport.is_closing():
            self.lost = True
            self.transport.close()


class Client:
    """Keep-alive pools per origin; ``request`` returns once the answer's headers arrived."""

    def __init__(self, *, connect_timeout: float, read_timeout: float | None):
        self.connect_timeout, self.read_timeout = connect_timeout, read_timeout
        self._idle: dict[tuple[str, int], list[_Connection]] = {}

    async def request(
        self, method: str, url: str, headers: Iterable[tuple[bytes, bytes]], body: bytes
    ) -> Response:
        """``url`` is ``http://host:port/path?query``; ``headers`` are sent as given (no Host,
        Content-Length or hop-by-hop ones: those are added here)."""
        rest = url[7:] if url.startswith("http://") else url
        netloc, _, target = rest.partition("/")
        host, port = _host_port(netloc)
        parts = [method.encode(), b" /", target.encode("latin-1"), b" HTTP/1.1\r\nhost: ",
                 netloc.encode(), b"\r\ncontent-length: %d\r\n" % len(body)]  # fmt: skip
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        parts += (b"\r\n", body)
        # one write; a large body (images in chat) goes beside the head rather than copied
        message = b"".join(parts) if len(body) <= COPY_MAX else [b"".join(parts[:-1]), body]
        conn = self._take((host, port))
        if conn is not None:
            try:
                return await self._send(conn, message)
            except UpstreamTimeoutError:
                raise
            except UpstreamError:
                if conn.received:
                    raise
                # the upstream closed this idle connection as we used it: it never saw the
                # request, so it goes once more on a new connection
        return await self._send(await self._connect((host, port)), message)

    async def _send(self, conn: _Connection, message: bytes | list[bytes]) -> Response:
        assert conn.transport is not None
        try:
            if isinstance(message, bytes):
                conn.transport.write(message)
            else:
                conn.transport.writelines(message)
            return await conn.wait_response()
        except BaseException:
            conn.finish(reuse=False)
            raise

    async def _connect(self, origin: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        conn = _Connection(self, origin, self.read_timeout)
        try:
            async with asyncio.timeout(self.connect_timeout):
                await loop.create_connection(lambda: conn, *origin)
        except TimeoutError as exc:
            raise UpstreamTimeoutError("connecting timed out") from exc
        except OSError as exc:
            raise UpstreamError(f"cannot connect ({exc.strerror or type(exc).__name__})") from exc
        return conn

    def _take(self, origin: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if conn.lost or conn.received or transport is None or transport.is_closing():
                conn.finish(reuse=False)  # closed meanwhile, or it spoke out of turn
                continue
            if now - conn.idle_since > IDLE_S:
                conn.finish(reuse=False)
                continue
            return conn
        return None

    def put(self, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        self._idle.setdefault(conn.origin, []).append(conn)

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    async def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.finish(reuse=False)
        self._idle.clear()


def _host_port(netloc: str) -> tuple[str, int]:
    if netloc.startswith("["):  # [v6]:port
        host, _, port = netloc[1:].partition("]")
        return host, int(port[1:]) if port.startswith(":") else 80
    host, _, port = netloc.partition(":")
    return host, int(port) if port else 80
