"""The proxy's lean upstream client against a scripted HTTP/1.1 server on port 0: what it
sends, the three ways a body ends (length, chunks, close), keep-alive reuse, a pooled
connection the server closed, 1xx skipped, errors and the read timeout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from app.proxy.upstream import Client, UpstreamError, UpstreamTimeoutError

Answer = Callable[[bytes], list[bytes] | None]
"""Request bytes → the writes of the answer (None: close without answering)."""


class Server:
    """Reads one request at a time (headers + Content-Length body) and writes the scripted
    answer; records each request and the connection it came on."""

    def __init__(self, answer: Answer, *, close_after: bool = False):
        self.answer, self.close_after = answer, close_after
        self.requests: list[tuple[int, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        conn = len(self.writers)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                request = head + await reader.readexactly(length)
                self.requests.append((conn, request))
                writes = self.answer(request)
                if writes is None:
                    break
                for data in writes:
                    writer.write(data)
                    await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.close()


def fixed(body: bytes, extra: bytes = b"") -> Answer:
    return lambda _: [
        b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        + extra
        + b"content-length: %d\r\n\r\n%s" % (len(body), body)
    ]


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    c = Client(connect_timeout=5.0, read_timeout=30.0)
    yield c
    await c.close()


async def test_one_write_with_host_and_length_then_a_fixed_length_answer(client: Client) -> None:
    server = Server(fixed(b'{"ok":true}', b"x-extra: 1\r\n"))
    base = await server.start()
    try:
        resp = await client.request(
            "POST", f"{base}/v1/chat/completions?a=b", [(b"content-type", b"application/json")],
            b'{"model":"m"}',
        )  # fmt: skip
        assert resp.status == 200
        assert resp.headers["X-Extra"] == "1" and resp.content_length == 11
        assert await resp.read() == b'{"ok":true}'
        resp.release()
        _, request = server.requests[0]
        port = base.rsplit(":", 1)[1]
        assert request.startswith(b"POST /v1/chat/completions?a=b HTTP/1.1\r\n")
        assert f"host: 127.0.0.1:{port}\r\n".encode() in request
        assert (
            b"content-length: 13\r\n" in request
            and b"content-type: application/json\r\n" in request
        )
        assert request.endswith(b'\r\n\r\n{"model":"m"}')
    finally:
        await server.close()


async def test_keep_alive_reuses_the_connection(client: Client) -> None:
    server = Server(fixed(b"{}"))
    base = await server.start()
    try:
        for _ in range(3):
            resp = await client.request("POST", f"{base}/x", [], b"{}")
            assert await resp.read() == b"{}"
            resp.release()
        assert [conn for conn, _ in server.requests] == [1, 1, 1]
    finally:
        await server.close()


async def test_a_chunked_stream_arrives_piece_by_piece(client: Client) -> None:
    def answer(_: bytes) -> list[bytes]:
        return [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                b"transfer-encoding: chunked\r\n\r\n", b"7\r\ndata: 1\r\n"]  # fmt: skip

    server = Server(answer)
    base = await server.start()
    try:
        resp = await client.request("POST", f"{base}/s", [], b"{}")
        assert resp.content_length is None
        chunks = resp.content.iter_any()
        assert await chunks.__anext__() == b"data: 1"  # before the upstream has finished
        assert not resp.content.at_eof()
        server.writers[0].write(b"7\r\ndata: 2\r\n0\r\n\r\n")
        assert b"".join([chunk async for chunk in chunks]) == b"data: 2"
        assert resp.content.at_eof()
        resp.release()
        again = await client.request("POST", f"{base}/s", [], b"{}")  # reused after the end
        again.close()
        assert [conn for conn, _ in server.requests] == [1, 1]
    finally:
        await server.close()


async def test_a_body_ended_by_closing_the_connection(client: Client) -> None:
    server = Server(lambda _: [b"HTTP/1.1 200 OK\r\n\r\nall of it"], close_after=True)
    base = await server.start()
    try:
        resp = await client.request("POST", f"{base}/c", [], b"{}")
        assert await resp.read() == b"all of it"
        resp.release()  # not reusable: closed
        resp = await client.request("POST", f"{base}/c", [], b"{}")
        assert await resp.read() == b"all of it"
        assert [conn for conn, _ in server.requests] == [1, 2]
    finally:
        await server.close()


async def test_a_pooled_connection_the_server_closed_is_replaced(client: Client) -> None:
    server = Server(fixed(b"{}"))
    base = await server.start()
    try:
        resp = await client.request("POST", f"{base}/x", [], b"{}")
        await resp.read()
        resp.release()
        server.writers[0].close()  # the server drops the idle connection (its keep-alive ran out)
        await server.writers[0].wait_closed()
        resp = await client.request("POST", f"{base}/x", [], b"{}")
        assert await resp.read() == b"{}"
        assert [conn for conn, _ in server.requests] == [1, 2]
    finally:
        await server.close()


async def test_1xx_is_skipped(client: Client) -> None:
    server = Server(lambda _: [b"HTTP/1.1 100 Continue\r\n\r\n", *fixed(b"{}")(b"")])
    base = await server.start()
    try:
        resp = await client.request("POST", f"{base}/x", [], b"{}")
        assert resp.status == 200 and await resp.read() == b"{}"
    finally:
        await server.close()


async def test_unreachable_closed_without_answer_and_garbage_are_errors(client: Client) -> None:
    server = Server(lambda _: None)
    base = await server.start()
    await server.close()
    with pytest.raises(UpstreamError):
        await client.request("POST", f"{base}/x", [], b"{}")  # nothing listens any more
    for answer in (lambda _: None, lambda _: [b"NOT HTTP AT ALL\r\n\r\n"]):
        server = Server(answer)
        base = await server.start()
        try:
            with pytest.raises(UpstreamError):
                await client.request("POST", f"{base}/x", [], b"{}")
        finally:
            await server.close()


async def test_an_upstream_that_breaks_off_mid_body_is_an_error(client: Client) -> None:
    server = Server(
        lambda _: [b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\npartial"], close_after=True
    )
    base = await server.start()
    try:
        resp = await client.request("POST", f"{base}/x", [], b"{}")
        with pytest.raises(UpstreamError):
            await resp.read()
    finally:
        await server.close()


async def test_silence_past_the_read_timeout() -> None:
    server = Server(lambda _: [b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n"])
    base = await server.start()
    client = Client(connect_timeout=5.0, read_timeout=0.05)
    try:
        resp = await client.request("POST", f"{base}/x", [], b"{}")  # headers, then nothing
        with pytest.raises(UpstreamTimeoutError):
            await resp.read()
    finally:
        await client.close()
        await server.close()


async def test_a_large_body_arrives_whole(client: Client) -> None:
    server = Server(fixed(b"{}"))
    base = await server.start()
    body = bytes(range(256)) * 2048  # 512 KiB: sent beside the head, not joined to it
    try:
        resp = await client.request("POST", f"{base}/x", [], body)
        assert await resp.read() == b"{}"
        assert server.requests[0][1].endswith(b"\r\n\r\n" + body)
    finally:
        await server.close()
