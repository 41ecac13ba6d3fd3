"""Order, replicas, kills, restarts, refused keys, unreachable hosts and cancel — real servers."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import contracts as c
from app.bus import Bus, connect
from app.config import HostConfig
from tests import stack
from tests.servers import sleepers


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str) -> Any:
    hosts = [
        stack.ssh_host_config(f"gpu-{unique}", ssh_host),
        HostConfig(alias=f"loc-{unique}", address="localhost", transport="local"),
    ]
    return stack.make_settings(
        tmp_path / "data", nats_server.url, hosts, known_hosts=str(ssh_host.known_hosts_path)
    )


async def _collect(bus: Bus, subject: str, until: Any, timeout: float = 30) -> list[c.Event]:
    """Events on ``subject`` (replayed from the start) until ``until(events)`` holds."""
    sub = await bus.js.subscribe(subject, ordered_consumer=True)
    events: list[c.Event] = []
    deadline = time.monotonic() + timeout
    try:
        while not until(events):
            msg = await sub.next_msg(timeout=max(0.1, deadline - time.monotonic()))
            events.append(c.decode_event(msg.data))
    finally:
        await sub.unsubscribe()
    return events


def _finals(n: int) -> Any:
    return lambda evs: sum(e.kind in c.FINAL_KINDS for e in evs) >= n


async def test_one_host_in_order_across_replicas_other_host_in_parallel(
    settings: Any, ssh_host: Any
) -> None:
    slow, fast = settings.hosts[0].alias, settings.hosts[1].alias
    ssh_host.set_docker_delay(0.4)
    async with stack.executor(settings, "exec-a") as bus, stack.executor(settings, "exec-b"):
        for i in range(4):
            await bus.js.publish(c.cmd_host(slow, "probe"), b"{}", headers={"Nats-Msg-Id": f"s{i}"})
        await bus.js.publish(c.cmd_host(fast, "probe"), b"{}", headers={"Nats-Msg-Id": "f0"})
        events = await _collect(bus, "spark.evt.job.*.*", _finals(5))
    order = [(e.job_id, e.kind) for e in events if e.kind in ("started", "done")]
    slow_order = [x for x in order if x[0].startswith("s")]
    assert slow_order == [(f"s{i}", k) for i in range(4) for k in ("started", "done")]
    assert order.index(("f0", "done")) < order.index(("s0", "done"))  # not behind the slow host
    assert {e.worker for e in events if e.kind == "started"} <= {"exec-a", "exec-b"}


async def test_sigkill_mid_job_another_replica_finishes_it_once(
    settings: Any, ssh_host: Any, tmp_path: Path
) -> None:
    alias = settings.hosts[0].alias
    ssh_host.set_docker_delay(3)
    config = stack.write_config(settings, tmp_path / "settings.yaml")
    victim = stack.worker_process(config, name="exec-victim")
    bus = await connect(settings, name="test")
    try:
        await stack.wait_for(lambda: _started_workers(bus), timeout=20)
        await bus.js.publish(c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": "kill-1"})
        started = await _collect(
            bus, c.evt_job_filter("kill-1"), lambda e: e and e[-1].kind == "started"
        )
        assert started[-1].worker == "exec-victim"
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        async with stack.executor(settings, "exec-heir"):
            events = await _collect(bus, c.evt_job_filter("kill-1"), _finals(1))
            await asyncio.sleep(settings.ack_wait_s * 1.5)  # no late second run
            events = await _collect(bus, c.evt_job_filter("kill-1"), _finals(1), timeout=2)
            info = await bus.js.stream_info(c.CMD_STREAM)
        kinds = [(e.kind, e.worker) for e in events]
        assert kinds == [
            ("accepted", "exec-victim"),
            ("started", "exec-victim"),
            ("started", "exec-heir"),
            ("done", "exec-heir"),
        ]
        got = await bus.get_job("kill-1")
        assert got is not None
        job = got[0]
        assert (job.state, job.attempts, job.worker) == ("succeeded", 2, "exec-heir")
        assert info.state.messages == 0
    finally:
        if victim.poll() is None:
            victim.kill()
        await bus.close()


async def _started_workers(bus: Bus) -> bool:
    from app.jobs import discover_workers

    return any(w["name"] == c.EXECUTOR_SERVICE for w in await discover_workers(bus, 0.2))


async def test_nats_restart_mid_job_loses_no_event(
    settings: Any, ssh_host: Any, nats_server: Any
) -> None:
    alias = settings.hosts[0].alias
    ssh_host.set_docker_delay(2)
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            job_id = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            bus = await connect(settings, name="watch")
            await _collect(bus, c.evt_job_filter(job_id), lambda e: e and e[-1].kind == "started")
            await bus.close()
            nats_server.restart()

            async def final() -> bool:
                try:
                    r = await client.get(f"/api/jobs/{job_id}")
                except httpx.HTTPError:
                    return False
                return r.status_code == 200 and r.json()["state"] in ("succeeded", "failed")

            await stack.wait_for(final, timeout=30, every=0.2)
            events = await stack.sse_events(client, f"/api/jobs/{job_id}/events")
            assert [e["event"] for e in events] == ["accepted", "started", "done"]
            assert (await client.get(f"/api/jobs/{job_id}")).json()["state"] == "succeeded"
            # both sides reconnected: a new job runs end to end
            again = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            ssh_host.set_docker_delay(0)
            events = await stack.sse_events(client, f"/api/jobs/{again}/events")
            assert events[-1]["event"] == "done"


async def test_unknown_or_changed_host_key_is_refused(
    settings: Any, ssh_host: Any, tmp_path: Path
) -> None:
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    wrong = ssh_host.write_wrong_known_hosts(tmp_path / "wrong_known_hosts")
    alias = settings.hosts[0].alias
    for known in (empty, wrong):
        s = stack.make_settings(
            Path(settings.data_dir), settings.nats_url, settings.hosts, known_hosts=str(known)
        )
        async with stack.executor(s) as bus:
            job_id = f"key-{known.name[:5]}"
            await bus.js.publish(c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": job_id})
            events = await _collect(bus, c.evt_job_filter(job_id), _finals(1))
        final = events[-1]
        assert (final.kind, final.code) == ("failed", "HOST_KEY_REFUSED")
        assert final.message and str(known) in final.message
        assert known.read_text() == (
            "" if known == empty else wrong.read_text()
        )  # nothing recorded


async def test_sshd_down_fails_within_connect_timeout_and_worker_keeps_serving(
    settings: Any, ssh_host: Any
) -> None:
    alias, local = settings.hosts[0].alias, settings.hosts[1].alias
    async with stack.executor(settings) as bus:
        ssh_host.stop()
        t0 = time.monotonic()
        await bus.js.publish(c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": "down-1"})
        events = await _collect(bus, c.evt_job_filter("down-1"), _finals(1))
        elapsed = time.monotonic() - t0
        assert (events[-1].kind, events[-1].code) == ("failed", "HOST_UNREACHABLE")
        assert elapsed < settings.ssh_connect_timeout_s + 2
        state = await bus.get_host_state(alias)
        assert state is not None and state.up is False
        await bus.js.publish(c.cmd_host(local, "probe"), b"{}", headers={"Nats-Msg-Id": "loc-1"})
        assert (await _collect(bus, c.evt_job_filter("loc-1"), _finals(1)))[-1].kind == "done"
        ssh_host.start()
        await bus.js.publish(c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": "down-2"})
        assert (await _collect(bus, c.evt_job_filter("down-2"), _finals(1)))[-1].kind == "done"
        state = await bus.get_host_state(alias)
        assert state is not None and state.up is True
        host_events = await _collect(bus, f"spark.evt.host.{alias}.*", lambda e: len(e) >= 3)
        assert [e.kind for e in host_events][:3] == ["down", "up", "probed"]


async def test_cancel_running_and_queued_jobs(settings: Any, ssh_host: Any) -> None:
    alias = settings.hosts[0].alias
    ssh_host.set_docker_delay(7.77)
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            running = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            queued = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            await _collect(bus, c.evt_job_filter(running), lambda e: e and e[-1].kind == "started")
            await stack.wait_for(lambda: sleepers("7.77"), timeout=5)  # remote command running
            r = await client.post(f"/api/jobs/{queued}/cancel")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
            t0 = time.monotonic()
            r = await client.post(f"/api/jobs/{running}/cancel")
            assert r.status_code == 200 and r.json()["state"] == "cancelled"
            assert time.monotonic() - t0 < 5
            await stack.wait_for(lambda: not sleepers("7.77"), timeout=5)
            ev_run = await stack.sse_events(client, f"/api/jobs/{running}/events")
            ev_q = await stack.sse_events(client, f"/api/jobs/{queued}/events")
            assert [e["event"] for e in ev_run] == ["accepted", "started", "cancelled"]
            assert [e["event"] for e in ev_q] == ["accepted", "cancelled"]
            ssh_host.set_docker_delay(0)
            nxt = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            assert (await stack.sse_events(client, f"/api/jobs/{nxt}/events"))[-1][
                "event"
            ] == "done"
            r = await client.post(f"/api/jobs/{nxt}/cancel")  # finished: unchanged
            assert r.json()["state"] == "succeeded"
