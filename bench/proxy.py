"""Proxy overhead, side by side in one run against the same local upstream: direct, through
spark-control's /v1 (web front as a process, real NATS), and through LiteLLM's proxy (from a
separate virtualenv, never the project's dependencies). At concurrency 1, 16 and 64, streaming
and not: latency p50 / p99 and the added p50 / p99 over direct, time to first token (TTFT) and
its overhead, requests/s. Not a test.

    .venv/bin/python bench/proxy.py [--requests 300] [--litellm /tmp/litellm-venv/bin/litellm]

LiteLLM: ``python3 -m venv /tmp/litellm-venv && /tmp/litellm-venv/bin/pip install
'litellm[proxy]'``; without it that column is skipped. The upstream is a minimal asyncio
OpenAI-compatible server (answers at once, five SSE chunks when streaming) so the figures are
the proxies' own; the load generator is a raw keep-alive HTTP/1.1 client for the same reason.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from app import aio  # noqa: E402
from app import contracts as c  # noqa: E402
from app.bus import connect  # noqa: E402
from app.config import HostConfig  # noqa: E402
from tests import stack  # noqa: E402
from tests.servers import NatsServer, free_port  # noqa: E402

MODEL = "bench"
KEY = "sk-" + secrets.token_hex(32)
"""The bearer key every request carries (LiteLLM's master key; the others ignore it)."""
CONCURRENCY = (1, 16, 64)

# --- the upstream ----------------------------------------------------------------------------


def _completion() -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4},
    }).encode()  # fmt: skip


def _chunk(text: str | None, finish: str | None) -> bytes:
    delta = {"content": text} if text is not None else {}
    return b"data: " + json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }).encode() + b"\n\n"  # fmt: skip


BODY = _completion()
CHUNKS = [_chunk(w, None) for w in ("one", " two", " three", " four")] + [
    _chunk(None, "stop"),
    b"data: [DONE]\n\n",
]
MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode()


async def _serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length, chunked = 0, False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"transfer-encoding" and b"chunked" in value.lower():
                    chunked = True
            body = await reader.readexactly(length) if length else b""
            if chunked:
                while (size := int((await reader.readline()).split(b";")[0], 16)) > 0:
                    body += await reader.readexactly(size + 2)
                await reader.readline()
            if head.startswith(b"GET"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(MODELS), MODELS))  # fmt: skip
            elif b'"stream":true' in body.replace(b" ", b""):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"transfer-encoding: chunked\r\n\r\n")  # fmt: skip
                for chunk in CHUNKS:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY))  # fmt: skip
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def serve_upstream(port: int) -> None:
    server = await asyncio.start_server(_serve_one, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


# --- the load generator ---------------------------------------------------------------------


class Conn:
    """One keep-alive HTTP/1.1 connection that times a POST: (first body byte, end)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[float, float]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        t0 = time.perf_counter()
        self.writer.write(
            b"POST %s HTTP/1.1\r\nhost: %s\r\ncontent-type: application/json\r\n"
            b"authorization: Bearer %s\r\ncontent-length: %d\r\n\r\n%s"
            % (path.encode(), self.host.encode(), KEY.encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length, chunked, close = None, False, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value
            elif name == b"connection":
                close = value == b"close"
        first = None
        if chunked:
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                data = await self.reader.readexactly(size + 2)
                if first is None and b"data:" in data:
                    first = time.perf_counter() - t0
                if size == 0:
                    break
        else:
            await self.reader.readexactly(length or 0)
        total = time.perf_counter() - t0
        if status != 200:
            raise RuntimeError(f"HTTP {status}")
        if close:
            self.writer.close()
            self.writer = None
        return first if first is not None else total, total


async def run_cell(port: int, path: str, stream: bool, conc: int, n: int) -> dict[str, float]:
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                       "stream": stream, "max_tokens": 8}).encode()  # fmt: skip
    conns = [Conn("127.0.0.1", port) for _ in range(conc)]
    for conn in conns:  # warm up each connection
        await conn.post(path, body)
    lat: list[float] = []
    ttft: list[float] = []
    left = n

    async def worker(conn: Conn) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            first, total = await conn.post(path, body)
            ttft.append(first)
            lat.append(total)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in conns))
    took = time.perf_counter() - t0
    for conn in conns:
        if conn.writer:
            conn.writer.close()
    lat.sort()
    ttft.sort()
    return {
        "p50": statistics.median(lat) * 1000,
        "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
        "ttft": statistics.median(ttft) * 1000,
        "rps": len(lat) / took,
    }


# --- the proxies ------------------------------------------------------------------------------


async def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                r = await client.get(url, timeout=2, headers={"authorization": f"Bearer {KEY}"})
                if r.status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError(f"{url} did not answer")


def start_upstream(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, "--serve-upstream", str(port)])


def start_litellm(binary: str, upstream: int, root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    config = root / "litellm.yaml"
    config.write_text(
        "model_list:\n"
        f"  - model_name: {MODEL}\n"
        "    litellm_params:\n"
        f"      model: openai/{MODEL}\n"
        f"      api_base: http://127.0.0.1:{upstream}/v1\n"
        "      api_key: sk-bench\n"
        "litellm_settings:\n  telemetry: false\n  drop_params: true\n"
    )
    env = dict(os.environ, LITELLM_LOG="ERROR", LITELLM_TELEMETRY="False", LITELLM_MASTER_KEY=KEY)
    proc = subprocess.Popen(
        [binary, "--config", str(config), "--port", str(port), "--num_workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=root,
    )  # fmt: skip
    return proc, port


async def start_pair(
    root: Path, nats: NatsServer, procs: list[subprocess.Popen[bytes]]
) -> tuple[int, int]:
    """The stub upstream and a web front (process) serving it as model ``MODEL``; both are
    appended to ``procs``. Returns (upstream port, web port)."""
    upstream = free_port()
    procs.append(start_upstream(upstream))
    await wait_http(f"http://127.0.0.1:{upstream}/v1/models", 10)
    host = HostConfig(alias="bench", address="127.0.0.1", transport="local")
    settings = stack.make_settings(root / "data", nats.url, [host], log_level="warning")
    settings.bind_port = free_port()
    config = stack.write_config(settings, root / "settings.yaml")
    bus = await connect(settings, name="bench")
    await bus.put_model_state(c.ModelState(host="bench", model=MODEL, port=upstream,
                                           since=c.now()))  # fmt: skip
    await bus.close()
    procs.append(stack.part_process(config, "web"))
    await wait_http(f"http://127.0.0.1:{settings.bind_port}/v1/models", 30)
    return upstream, settings.bind_port


def report(cells: dict[tuple[bool, int, str], dict[str, float]]) -> None:
    print(f"{'stream':>6} {'conc':>4} {'target':>14} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'+p50':>7} {'+p99':>7} {'ttft ms':>8} {'+ttft':>7} {'req/s':>8}")  # fmt: skip
    for stream in (False, True):
        for conc in CONCURRENCY:
            d = cells[stream, conc, "direct"]
            for name in ("direct", "spark-control", "litellm"):
                r = cells.get((stream, conc, name))
                if r is None:
                    continue
                added = "" if r is d else f"{r['p50'] - d['p50']:7.2f} {r['p99'] - d['p99']:7.2f}"
                addt = "" if r is d else f"{r['ttft'] - d['ttft']:7.2f}"
                print(f"{stream!s:>6} {conc:>4} {name:>14} {r['p50']:8.2f} {r['p99']:8.2f} "
                      f"{added:>15} {r['ttft']:8.2f} {addt:>7} {r['rps']:8.0f}")  # fmt: skip
    lite = cells.get((True, 64, "litellm"))
    if lite:
        ratio = cells[True, 64, "spark-control"]["rps"] / lite["rps"]
        print(f"requests/s at concurrency 64, streaming: spark-control / LiteLLM = {ratio:.1f}x")


async def main(n: int, litellm: str | None) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        try:
            upstream, web = await start_pair(root, nats, procs)
            cells: dict[tuple[bool, int, str], dict[str, float]] = {}
            for name, port in (("direct", upstream), ("spark-control", web)):
                for stream in (False, True):
                    for conc in CONCURRENCY:
                        count = n if conc == 1 else max(n, conc * 20)
                        cells[stream, conc, name] = await run_cell(
                            port, "/v1/chat/completions", stream, conc, count
                        )
            if litellm:  # started only now: its background work would slow the others
                proc, port = start_litellm(litellm, upstream, root)
                procs.append(proc)
                try:
                    await wait_http(f"http://127.0.0.1:{port}/health/readiness", 180)
                except TimeoutError:
                    print("litellm did not start; column skipped", file=sys.stderr)
                else:
                    for stream in (False, True):
                        for conc in CONCURRENCY:
                            count = min(max(n, conc * 20), max(200, conc * 8))
                            cells[stream, conc, "litellm"] = await run_cell(
                                port, "/v1/chat/completions", stream, conc, count
                            )
            report(cells)
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            nats.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--requests", type=int, default=300, help="requests per cell at concurrency 1")
    p.add_argument("--litellm", default="/tmp/litellm-venv/bin/litellm")
    p.add_argument("--serve-upstream", type=int, default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.serve_upstream:
        aio.run(serve_upstream(a.serve_upstream))
    else:
        aio.run(main(a.requests, a.litellm if Path(a.litellm).exists() else None))
