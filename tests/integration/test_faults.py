"""Faults the rest of the stack rides out (issue 8): the web front SIGKILLed mid-job, NATS
restarted mid-swap. Real NATS, OpenSSH with the host simulator, web fronts as processes."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog
from tests import stack
from tests.servers import free_port


async def _front_up(base: str) -> bool:
    try:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{base}/api/status", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


def _front(settings: Any, root: Path, name: str) -> tuple[Any, str]:
    settings.bind_port = free_port()
    config = stack.write_config(settings, root / f"{name}.yaml")
    return stack.part_process(config, "web"), f"http://127.0.0.1:{settings.bind_port}"


async def test_web_front_sigkilled_mid_job(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str
) -> None:
    """The front that queued a job dies; the job runs on, and another front shows all of it."""
    alias = f"gpu-{unique}"
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [stack.ssh_host_config(alias, ssh_host)],
        known_hosts=str(ssh_host.known_hosts_path),
    )  # fmt: skip
    ssh_host.set_docker_delay(1.5)
    async with stack.executor(settings):
        first, base = _front(settings, tmp_path, "first")
        try:
            await stack.wait_for(lambda: _front_up(base), timeout=60)
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                job_id = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        second, base = _front(settings, tmp_path, "second")
        try:
            await stack.wait_for(lambda: _front_up(base), timeout=60)
            async with httpx.AsyncClient(base_url=base, timeout=30) as client:
                events = await stack.sse_events(client, f"/api/jobs/{job_id}/events")
                assert [e["event"] for e in events] == ["accepted", "started", "done"]
                record = (await client.get(f"/api/jobs/{job_id}")).json()
                assert record["state"] == "succeeded" and record["attempts"] == 1
        finally:
            second.terminate()
            second.wait(15)


async def test_nats_restarted_mid_swap(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """NATS goes away while a model starts: the swap finishes, its log and final event are all
    there (in order), and the host's model is recorded."""
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    overrides = tmp_path / "models.overrides.yaml"
    overrides.write_text(yaml.safe_dump({"models": {"slow": {
        "repo": "org/model-slow", "port": port, "weight_bytes": 2**30, "start_timeout_s": 60,
        "max_model_len": 4096, "gpu_memory_utilization": 0.3,
    }}}))  # fmt: skip
    monkeypatch.setenv("MODELS_OVERRIDES", str(overrides))
    ssh_host.sim_config(start_delay_s=3.0, bind_host="127.0.0.1")
    alias = f"gpu-{unique}"
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [stack.ssh_host_config(alias, ssh_host)],
        known_hosts=str(ssh_host.known_hosts_path),
    )  # fmt: skip
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            r = await client.post("/api/swap", json={"model": "slow", "host": alias})
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]

            async def logging_started() -> bool:
                r = await client.get(f"/api/jobs/{job_id}")
                return r.status_code == 200 and r.json()["state"] == "running"

            await stack.wait_for(logging_started, timeout=30)
            nats_server.restart()

            async def finished() -> bool:
                try:
                    r = await client.get(f"/api/jobs/{job_id}")
                except httpx.HTTPError:
                    return False
                return r.status_code == 200 and r.json()["state"] in ("succeeded", "failed")

            await stack.wait_for(finished, timeout=90, every=0.3)
            events = await stack.sse_events(client, f"/api/jobs/{job_id}/events")
            kinds = [e["event"] for e in events]
            assert kinds[0] == "accepted" and kinds[-1] == "done", events[-1]
            assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
            lines = [e["data"]["line"] for e in events if e["event"] == "log"]
            assert any("Application startup complete." in line for line in lines)
            state = await bus.get_model_state(alias)
            assert state is not None and state.model == "slow"
