"""Proxy under load (issue 8): 500 concurrent streaming clients through spark-control's /v1 to a
stub upstream (web front as a process, real NATS), beside the same load sent directly. Prints
errors, latency p50 / p99 and the added p99, requests/s, and the web front's peak RSS (VmHWM).
Not a test.

    .venv/bin/python bench/proxy_load.py [--clients 500] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

from proxy import MODEL, Conn, start_pair  # noqa: E402

from app import aio  # noqa: E402
from tests.servers import NatsServer  # noqa: E402

BODY = (
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "stream": true, '
    b'"max_tokens": 8}' % MODEL.encode()
)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(port: int, clients: int, total: int) -> dict[str, float]:
    """``clients`` keep-alive connections, each posting streaming requests back to back."""
    conns = [Conn("127.0.0.1", port) for _ in range(clients)]
    lat: list[float] = []
    errors = 0
    left = total

    async def worker(conn: Conn) -> None:
        nonlocal left, errors
        while left > 0:
            left -= 1
            try:
                lat.append((await conn.post("/v1/chat/completions", BODY))[1])
            except (OSError, RuntimeError, asyncio.IncompleteReadError, ValueError):
                errors += 1
                conn.writer = None  # reconnect

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(conn) for conn in conns))
    took = time.perf_counter() - t0
    for conn in conns:
        if conn.writer:
            conn.writer.close()
    lat.sort()
    pick = lambda q: lat[min(len(lat) - 1, int(len(lat) * q))] * 1000  # noqa: E731
    return {"errors": errors, "ok": len(lat), "p50": pick(0.5), "p99": pick(0.99),
            "rps": len(lat) / took}  # fmt: skip


async def main(clients: int, total: int) -> None:
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        try:
            upstream, web_port = await start_pair(root, nats, procs)
            web = procs[-1]
            idle = peak_rss_mib(web.pid)
            direct = await load(upstream, clients, total)
            proxied = await load(web_port, clients, total)
            peak = peak_rss_mib(web.pid)
        finally:
            for proc in procs:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
            nats.stop()
    print(f"{clients} concurrent streaming clients, {total} requests each way")
    for name, r in (("direct", direct), ("spark-control", proxied)):
        print(f"  {name:<14} errors {r['errors']:4.0f}  ok {r['ok']:5.0f}  p50 {r['p50']:8.1f} ms"
              f"  p99 {r['p99']:8.1f} ms  {r['rps']:7.0f} req/s")  # fmt: skip
    print(f"  added p99: {proxied['p99'] - direct['p99']:.1f} ms")
    print(f"  web front peak RSS: {peak:.0f} MiB (idle {idle:.0f} MiB; target < 300 MB)")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=500)
    p.add_argument("--requests", type=int, default=3000)
    a = p.parse_args()
    aio.run(main(a.clients, a.requests))
