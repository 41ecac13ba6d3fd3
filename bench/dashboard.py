"""Dashboard speed (issue 7): the overview page's time with 2 and with 50 hosts (p50 / p99 of
GET / against a web front process on real NATS, every host with a probe, a model, an endpoint
and an hour of probe history; GET /healthz beside it as the HTTP floor), and how many events per
second one SSE connection carries (a job's 5,000 events replayed through
/api/jobs/<id>/events). Not a test.

    .venv/bin/python bench/dashboard.py [--requests 100]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import aio
from app import contracts as c
from app.bus import Bus, connect
from app.config import HostConfig
from tests import stack
from tests.servers import NatsServer, free_port

GIB = 2**30


def probe(alias: str, t: float, load: float) -> c.ProbeResult:
    return c.ProbeResult(
        host=alias, uptime_s=86400, load=(load, load, load), mem_total_bytes=128 * GIB,
        mem_available_bytes=int((60 + 30 * load) * GIB), swap_total_bytes=0, swap_free_bytes=0,
        disks=[c.DiskUsage(path="/home/ops", total_bytes=4000 * GIB, used_bytes=1500 * GIB,
                           free_bytes=2500 * GIB)],
        docker=True,
        containers=[c.Container(id="abc", name="vllm_node", image="nvcr.io/nvidia/vllm:25.09-py3",
                                status="Up 2 hours", ports="0.0.0.0:8000->8000/tcp")],
        gpus=[c.Gpu(name="NVIDIA GB10", utilization_pct=40 * load)],
        probed_at=t, duration_ms=3.0, sampled_at=t,
    )  # fmt: skip


async def populate(bus: Bus, aliases: list[str]) -> None:
    now = c.now()
    for i, alias in enumerate(aliases):
        await bus.put_host_state(c.HostState(host=alias, up=True, checked_at=now,
                                             probe=probe(alias, now, 0.5)))  # fmt: skip
        model = c.ModelState(host=alias, model=f"model-{i}", port=8000, container="vllm_node",
                             since=now - 3600)  # fmt: skip
        await bus.put_model_state(model)
        name = c.vllm_endpoint(alias)
        health = c.EndpointHealth(name=name, kind="llm", host=alias, state="up",
                                  base_url=f"http://10.0.0.{i}:8000", checked_at=now,
                                  since=now - 3600, model=f"model-{i}")  # fmt: skip
        await bus.state.put(c.endpoint_state_key(name), c.encode(health))
        sends = []
        for k in range(60):  # an hour of probes, one a minute
            t = now - 3600 + k * 60
            ev = c.Event(kind="probed", ts=t, host=alias,
                         data=probe(alias, t, (k % 10) / 10))  # fmt: skip
            sends.append(bus.publish_event(c.evt_host(alias, "probed"), ev))
        await asyncio.gather(*sends)


async def page_times(base: str, path: str, n: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(n + 5):
            t0 = time.perf_counter()
            r = await client.get(path, headers={"accept": "text/html"})
            r.raise_for_status()
            if i >= 5:
                out.append((time.perf_counter() - t0) * 1000)
    return out


async def sse_rate(bus: Bus, base: str, events: int) -> float:
    job = c.JobRecord(id="bench-sse", host="h00", action="probe", state="running",
                      created_at=c.now(), updated_at=c.now())  # fmt: skip
    await bus.create_job(job)
    sends = [bus.publish_event(c.evt_job(job.id, "log"),
                               c.Event(kind="log", ts=c.now(), job_id=job.id, line=f"line {i}"))
             for i in range(events)]  # fmt: skip
    await asyncio.gather(*sends)
    await bus.publish_event(c.evt_job(job.id, "done"),
                            c.Event(kind="done", ts=c.now(), job_id=job.id))  # fmt: skip
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        t0 = time.perf_counter()
        got = 0
        async with client.stream("GET", f"/api/jobs/{job.id}/events") as resp:
            async for line in resp.aiter_lines():
                if line.startswith("event: "):
                    got += 1
                    if line == "event: done":
                        break
        return got / (time.perf_counter() - t0)


def pct(ms: list[float], p: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


async def one(root: Path, nats: NatsServer, n_hosts: int, n: int) -> dict[str, float]:
    aliases = [f"h{i:02d}" for i in range(n_hosts)]
    hosts = [HostConfig(alias=a, address=f"10.0.0.{i}", user="ops") for i, a in enumerate(aliases)]
    port = free_port()
    settings = stack.make_settings(root / f"data-{n_hosts}", nats.url, hosts, bind_port=port,
                                   log_level="warning")  # fmt: skip
    bus = await connect(settings, name="bench")
    await populate(bus, aliases)
    web = stack.part_process(stack.write_config(settings, root / f"s{n_hosts}.yaml"), "web")
    base = f"http://127.0.0.1:{port}"
    try:
        await stack.wait_for(lambda: _up(base), timeout=60)
        await asyncio.sleep(2)  # the front has replayed the hour and mirrored the bucket
        floor = statistics.median(await page_times(base, "/healthz", n))
        page = await page_times(base, "/", n)
        rate = await sse_rate(bus, base, 5000) if n_hosts == 2 else 0.0
    finally:
        web.terminate()
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            web.kill()
        await bus.close()
    return {"p50": statistics.median(page), "p99": pct(page, 99), "floor": floor, "sse": rate}


async def _up(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{base}/healthz", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        try:
            small = await one(root, nats, 2, n)
            big = await one(root, nats, 50, n)
        finally:
            nats.stop()
    print(f"overview page GET /, {n} requests each, web front as a process on real NATS")
    for label, r in (("2 hosts", small), ("50 hosts", big)):
        print(f"  {label:<9} p50 {r['p50']:6.1f} ms  p99 {r['p99']:6.1f} ms  "
              f"(GET /healthz, the HTTP floor: {r['floor']:.1f} ms)")  # fmt: skip
    print("  target: <= 50 ms server time at 50 hosts")
    print(f"one SSE connection: {small['sse']:.0f} events/s (a job's 5,000 events replayed)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=100)
    aio.run(main(ap.parse_args().requests))
