"""A probe reads /proc live every time and reuses its slow sources (df, docker ps,
nvidia-smi) from a probe at most ``probe_max_age_s`` old, unless something that may have
changed the host ran since. Real NATS, sshd and the host simulator."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import stack


def _settings(tmp_path: Path, nats_server: Any, host: Any, unique: str, age: float) -> Any:
    return stack.make_settings(
        tmp_path / "data",
        nats_server.url,
        [stack.ssh_host_config(f"gpu-{unique}", host)],
        known_hosts=str(host.known_hosts_path),
        probe_max_age_s=age,
    )


async def _run(client: httpx.AsyncClient, alias: str, action: str) -> dict[str, Any]:
    r = await client.post(f"/api/hosts/{alias}/{action}")
    assert r.status_code == 202, r.text
    events = await stack.sse_events(client, r.json()["events"])
    assert events[-1]["event"] == "done", events[-1]
    data: dict[str, Any] = events[-1]["data"]["data"]
    return data


def _names(probe: dict[str, Any]) -> list[str]:
    return sorted(ct["name"] for ct in probe["containers"])


async def test_slow_sources_are_reused_until_the_host_may_have_changed(
    tmp_path: Path, nats_server: Any, sshd_host: Any, unique: str
) -> None:
    settings = _settings(tmp_path, nats_server, sshd_host, unique, age=60.0)
    alias = settings.hosts[0].alias
    sshd_host.add_container(name="first")
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            one = await _run(client, alias, "probe")
            assert one["sampled_at"] == one["probed_at"] and _names(one) == ["first"]
            calls = len(sshd_host.commands("docker"))

            sshd_host.add_container(name="by-hand")  # outside the executor: not seen yet
            two = await _run(client, alias, "probe")
            assert two["probed_at"] > one["probed_at"]
            assert two["sampled_at"] == one["probed_at"] and _names(two) == ["first"]
            assert two["uptime_s"] > one["uptime_s"]  # /proc is read live every time
            assert two["disks"] == one["disks"] and two["gpus"] == one["gpus"]
            assert len(sshd_host.commands("docker")) == calls  # docker ps did not run again

            await _run(client, alias, "disk")  # any other action may change the host
            three = await _run(client, alias, "probe")
            assert three["sampled_at"] == three["probed_at"]
            assert _names(three) == ["by-hand", "first"]
            assert len(sshd_host.commands("docker")) == calls + 1


@pytest.mark.parametrize("age", [0.0, 0.3])
async def test_reuse_is_off_at_zero_and_bounded_by_the_age(
    tmp_path: Path, nats_server: Any, sshd_host: Any, unique: str, age: float
) -> None:
    settings = _settings(tmp_path, nats_server, sshd_host, unique, age=age)
    alias = settings.hosts[0].alias
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            assert _names(await _run(client, alias, "probe")) == []
            sshd_host.add_container(name="late")
            await asyncio.sleep(age + 0.05)
            fresh = await _run(client, alias, "probe")
            assert fresh["sampled_at"] == fresh["probed_at"] and _names(fresh) == ["late"]


async def test_a_change_made_through_another_replica_is_never_hidden(
    tmp_path: Path, nats_server: Any, sshd_host: Any, unique: str
) -> None:
    """Two replicas share the host's commands; whichever ran the last action, the next probe
    never reuses a read from before it (the consumer's delivery sequence shows the gap)."""
    settings = _settings(tmp_path, nats_server, sshd_host, unique, age=60.0)
    alias = settings.hosts[0].alias
    crossed = 0  # rounds where the probe ran on another replica than the change before it
    async with stack.executor(settings, "exec-a"), stack.executor(settings, "exec-b"):
        async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
            await _run(client, alias, "probe")
            for i in range(8):
                sshd_host.add_container(name=f"c{i}")
                ran = []
                for action in ("disk", "probe"):
                    r = await client.post(f"/api/hosts/{alias}/{action}")
                    events = await stack.sse_events(client, r.json()["events"])
                    assert events[-1]["event"] == "done", events[-1]
                    ran.append(events[-1]["data"]["worker"])
                probe = events[-1]["data"]["data"]
                assert f"c{i}" in _names(probe), (i, ran, probe["sampled_at"], probe["probed_at"])
                crossed += ran[0] != ran[1]
    assert crossed > 0  # the case under test happened
