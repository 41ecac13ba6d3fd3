"""Command path benchmark: POST probe → its final event at an SSE client, against a real
OpenSSH sshd host, with NATS, the executor and the web front as separate processes.

Prints p50/p99 of the whole path twice: as shipped (a probe reads /proc live and reuses
df / docker ps / nvidia-smi from a probe at most ``probe_max_age_s`` old, unless something
that may change the host ran since) and with ``probe_max_age_s=0`` (every source run live).
Then the probe's remote part alone: on the kept shell channel (what the executor does), one
exec channel per command on an open connection, and a fresh connection per command.
Not a test: it prints figures.

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
from typing import Any

import aiohttp
import asyncssh

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.config import Settings
from tests import stack
from tests.servers import SSHD, NatsServer, SshdHost, free_port
from workers.probe import GPU_QUERY, PROBE_SCRIPT, probe_script
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


ALIAS = "spark1"
REUSED = "kept shell: probe, slow sources reused"
LIVE = "kept shell: probe, every source live"
SEVEN = "kept shell: the 7 commands one by one"
EXEC = "exec channel per command (7)"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, ms: list[float]) -> str:
    return (
        f"  {name:<44} p50 {statistics.median(ms):8.2f} ms   p99 {pct(ms, 99):8.2f} ms"
        f"   (n={len(ms)})"
    )


async def end_to_end(base: str, alias: str, runs: int) -> list[float]:
    """The client is aiohttp (one keep-alive connection): httpx spends about 8 ms of CPU per
    run on its own, on the same two cores as the processes being measured."""
    out = []
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(base, timeout=timeout) as client:
        for i in range(runs + 5):
            t0 = time.perf_counter()
            async with client.post(f"/api/hosts/{alias}/probe") as r:
                r.raise_for_status()
                events = (await r.json())["events"]
            async with client.get(events) as resp:
                resp.raise_for_status()
                async for raw in resp.content:
                    if raw.startswith(b"event: ") and raw[7:].strip() in (b"done", b"failed"):
                        if raw[7:].strip() == b"failed":
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
        (REUSED, [probe_script(set())]),
        (LIVE, [PROBE_SCRIPT]),
        (SEVEN, PROBE_COMMANDS),
    ):
        ms = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for cmd in script:
                await runner.run(cmd, timeout=10, reads_only=True)
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
        res[EXEC] = ms
    ms = []
    for _ in range(max(10, runs // 10)):
        t0 = time.perf_counter()
        for cmd in PROBE_COMMANDS:
            async with asyncssh.connect(**kw) as conn:
                await conn.run(cmd, env=host.env)
        ms.append((time.perf_counter() - t0) * 1000)
    res["fresh connection per command (7)"] = ms
    return res


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


async def stack_run(root: Path, nats: NatsServer, host: SshdHost, age: float, runs: int) -> Any:
    """Web front + executor as processes with ``probe_max_age_s=age``; the e2e figures."""
    port = free_port()
    settings = stack.make_settings(
        root / f"data-{age:g}",
        nats.url,
        [stack.ssh_host_config(ALIAS, host)],
        known_hosts=str(host.known_hosts_path),
        bind_port=port,
        log_level="warning",
        probe_max_age_s=age,
    )
    config = stack.write_config(settings, root / f"settings-{age:g}.yaml")
    procs = [
        stack.worker_process(config, "ssh", name=f"bench-exec-{age:g}"),
        stack.part_process(config, "web"),
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        await stack.wait_for(stack.front_ready(base), timeout=60)
        return settings, await end_to_end(base, ALIAS, runs)
    finally:
        _stop(procs)


async def main(runs: int) -> None:
    if not SSHD.exists():
        sys.exit("bench needs OpenSSH sshd (Debian package openssh-server)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        host = SshdHost(root / "ssh").start()
        host.add_container(name="vllm_node")
        try:
            settings, e2e = await stack_run(root, nats, host, Settings().probe_max_age_s, runs)
            _, e2e_live = await stack_run(root, nats, host, 0.0, runs)
            ways = await remote_ways(settings, host, runs)
        finally:
            host.stop()
            nats.stop()
    age = Settings().probe_max_age_s
    print(
        f"command path, {runs} runs, OpenSSH sshd on loopback, NATS + executor + web as processes"
    )
    print(line(f"POST probe → final SSE event (default: reuse ≤{age:g} s)", e2e))
    print(line("POST probe → final SSE event (probe_max_age_s=0)", e2e_live))
    print("the probe's remote part alone:")
    for name, ms in ways.items():
        print(line(name, ms))
    per_cmd = statistics.median(ways[EXEC])
    for name in (REUSED, LIVE, SEVEN):
        print(f"  {EXEC} vs {name}: {per_cmd / statistics.median(ways[name]):.1f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    asyncio.run(main(ap.parse_args().runs))
