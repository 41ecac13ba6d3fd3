"""Command path benchmark: POST probe → its final event at an SSE client, against a real
OpenSSH sshd host, with NATS, the executor and the web front as separate processes.

Prints p50/p99 of the whole path, then the same probe's remote commands three ways: on the
kept shell channel (what the executor does), one exec channel per command on an open
connection, and a fresh connection per command. Not a test: it prints figures.

    .venv/bin/python bench/command_path.py [--runs 200]
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

import asyncssh
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import stack
from tests.servers import SSHD, NatsServer, SshdHost, free_port
from workers.probe import GPU_QUERY, PROBE_SCRIPT
from workers.runner import ShellRunner
from workers.transport import CIPHERS, SshTransport

PROBE_COMMANDS = [
    "cat /proc/uptime",
    "cat /proc/loadavg",
    "cat /proc/meminfo",
    'df -P -B1 -- "$HOME"',
    'df -P -B1 -- "$HOME/.cache/huggingface"',
    "docker ps --format '{{json .}}'",
    f"nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits",
]


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, ms: list[float]) -> str:
    return (
        f"  {name:<44} p50 {statistics.median(ms):8.2f} ms   p99 {pct(ms, 99):8.2f} ms"
        f"   (n={len(ms)})"
    )


async def end_to_end(base: str, alias: str, runs: int) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        for i in range(runs + 5):
            t0 = time.perf_counter()
            r = await client.post(f"/api/hosts/{alias}/probe")
            r.raise_for_status()
            async with client.stream("GET", r.json()["events"]) as resp:
                async for text in resp.aiter_lines():
                    if text.startswith("event: ") and text[7:] in ("done", "failed"):
                        if text[7:] == "failed":
                            raise RuntimeError("probe failed")
                        break
            if i >= 5:  # warm-up runs are not counted
                out.append((time.perf_counter() - t0) * 1000)
    return out


async def remote_ways(
    settings: stack.Settings, host: SshdHost, runs: int
) -> dict[str, list[float]]:
    res: dict[str, list[float]] = {}
    runner = ShellRunner(SshTransport(settings.hosts[0], settings))
    await runner.run("true", timeout=10)
    for label, script in (
        ("kept shell: probe script (one round-trip)", [PROBE_SCRIPT]),
        ("kept shell: 7 commands", PROBE_COMMANDS),
    ):
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for cmd in script:
                await runner.run(cmd, timeout=10)
            ms.append((time.perf_counter() - t0) * 1000)
        res[label] = ms
    await runner.close()
    kw = {**host.connect_kwargs(), "encryption_algs": CIPHERS}  # same ciphers as the executor
    async with asyncssh.connect(**kw) as conn:
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for cmd in PROBE_COMMANDS:
                await conn.run(cmd, env=host.env)
            ms.append((time.perf_counter() - t0) * 1000)
        res["exec channel per command (7)"] = ms
    ms = []
    for _ in range(max(10, runs // 10)):
        t0 = time.perf_counter()
        for cmd in PROBE_COMMANDS:
            async with asyncssh.connect(**kw) as conn:
                await conn.run(cmd, env=host.env)
        ms.append((time.perf_counter() - t0) * 1000)
    res["fresh connection per command (7)"] = ms
    return res


async def main(runs: int) -> None:
    if not SSHD.exists():
        sys.exit("bench needs OpenSSH sshd (Debian package openssh-server)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        host = SshdHost(root / "ssh").start()
        host.add_container(name="vllm_node")
        alias = "spark1"
        port = free_port()
        settings = stack.make_settings(
            root / "data",
            nats.url,
            [stack.ssh_host_config(alias, host)],
            known_hosts=str(host.known_hosts_path),
            bind_port=port,
            log_level="warning",
        )
        config = stack.write_config(settings, root / "settings.yaml")
        procs = [
            stack.worker_process(config, "ssh", name="bench-exec"),
            stack.part_process(config, "web"),
        ]
        base = f"http://127.0.0.1:{port}"
        try:
            await stack.wait_for(stack.front_ready(base), timeout=60)
            e2e = await end_to_end(base, alias, runs)
            ways = await remote_ways(settings, host, runs)
        finally:
            for p in procs:
                p.terminate()
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
            host.stop()
            nats.stop()
    print(
        f"command path, {runs} runs, OpenSSH sshd on loopback, NATS + executor + web as processes"
    )
    print(line("POST probe → final event at SSE client", e2e))
    print("the probe's remote part alone:")
    for name, ms in ways.items():
        print(line(name, ms))
    per_cmd = statistics.median(ways["exec channel per command (7)"])
    script = statistics.median(ways["kept shell: probe script (one round-trip)"])
    kept = statistics.median(ways["kept shell: 7 commands"])
    print(f"  probe as the executor runs it vs an exec channel each: {per_cmd / script:.1f}x")
    print(f"  7 commands on the kept shell vs an exec channel each:  {per_cmd / kept:.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    asyncio.run(main(ap.parse_args().runs))
