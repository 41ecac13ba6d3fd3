"""The spark-control stack assembled for tests and benchmarks: settings pointing at real servers,
in-process executors and web front (uvicorn on port 0), and worker processes for kill tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import uvicorn
import yaml

from app.bus import Bus, connect
from app.config import HostConfig, Settings
from workers import blob_signer, ssh_executor

REPO = Path(__file__).resolve().parent.parent


def ssh_host_config(alias: str, host: Any) -> HostConfig:
    """A HostConfig for a test sshd (``tests.servers.SshdHost`` / ``AsyncsshHost``)."""
    return HostConfig(
        alias=alias,
        address=host.host,
        port=host.port,
        user=host.user,
        key_path=str(host.client_key_path),
    )


def make_settings(
    data_dir: Path, nats_url: str, hosts: list[HostConfig], known_hosts: str = "", **kw: Any
) -> Settings:
    base: dict[str, Any] = dict(
        data_dir=str(data_dir),
        nats_url=nats_url,
        hosts=hosts,
        ack_wait_s=2.0,
        ssh_connect_timeout_s=3.0,
        command_timeout_s=30.0,
        discovery_window_s=0.2,
    )
    if known_hosts:
        base["ssh_known_hosts"] = known_hosts
    base.update(kw)
    return Settings(**base)


def write_config(settings: Settings, path: Path) -> Path:
    """The settings as a YAML file, for worker processes."""
    import msgspec

    path.write_text(yaml.safe_dump(msgspec.to_builtins(settings)))
    return path


@contextlib.asynccontextmanager
async def executor(settings: Settings, name: str = "exec-a") -> AsyncIterator[Bus]:
    """An in-process executor replica (with its micro-service registration)."""
    bus = await connect(settings, name=name)
    teardown = await ssh_executor.start(bus, settings, name)
    try:
        yield bus
    finally:
        await teardown()
        await bus.close()


@contextlib.asynccontextmanager
async def signer(settings: Settings, name: str = "signer-a") -> AsyncIterator[Bus]:
    bus = await connect(settings, name=name)
    teardown = await blob_signer.start(bus, settings, name)
    try:
        yield bus
    finally:
        await teardown()
        await bus.close()


@contextlib.asynccontextmanager
async def web(settings: Settings) -> AsyncIterator[str]:
    """The web front under uvicorn on a kernel-chosen port; yields its base URL."""
    from app.web import create_app

    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def part_process(config: Path, *part: str, name: str = "") -> subprocess.Popen[bytes]:
    """A real ``spark-control <part>`` process (web, worker ssh, …) for kill tests and benches."""
    env = dict(os.environ)
    if name:
        env["SPARK_CONTROL_WORKER_NAME"] = name
    return subprocess.Popen(
        [sys.executable, "-m", "app.cli", "--config", str(config), *part],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def worker_process(config: Path, kind: str = "ssh", name: str = "") -> subprocess.Popen[bytes]:
    """A real worker process (``spark-control worker <kind>``)."""
    return part_process(config, "worker", kind, name=name)


async def sse_events(
    client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """Read an SSE stream to its end: [{id, event, data}] with data JSON-decoded."""
    out: list[dict[str, Any]] = []
    current: dict[str, Any] = {}
    async with client.stream("GET", url, headers=headers or {}) as resp:
        resp.raise_for_status()
        async for line in resp.aiter_lines():
            if not line:
                if "data" in current:
                    out.append(current)
                current = {}
                continue
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "data":
                current["data"] = json.loads(value) if value.startswith("{") else value
            elif field in ("id", "event"):
                current[field] = value
    return out


async def wait_for(predicate: Any, timeout: float = 10.0, every: float = 0.05) -> Any:
    """Poll an async or plain predicate until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)


def front_ready(base: str) -> Any:
    """A predicate for ``wait_for``: the web front answers and sees at least one worker."""

    async def check() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                r = await client.get(f"{base}/api/status", timeout=2)
                return r.status_code == 200 and bool(r.json()["workers"])
        except httpx.HTTPError:
            return False

    return check
