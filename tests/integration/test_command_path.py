"""Command → events → job record, end to end through real NATS, sshd and HTTP."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from app import contracts as c
from tests import stack


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str) -> Any:
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path)
    )


async def test_probe_over_http_streams_events_and_records_the_job(
    settings: Any, ssh_host: Any
) -> None:
    ssh_host.add_container(name="vllm_node", image="nvcr.io/nvidia/vllm:25.09-py3")
    alias = settings.hosts[0].alias
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.post(f"/api/hosts/{alias}/probe")
            assert r.status_code == 202, r.text
            body = r.json()
            assert body["events"] == f"/api/jobs/{body['job_id']}/events"
            events = await stack.sse_events(client, body["events"])
            kinds = [e["event"] for e in events]
            assert kinds == ["accepted", "started", "done"]
            assert [int(e["id"]) for e in events] == sorted(int(e["id"]) for e in events)
            probe = events[-1]["data"]["data"]
            assert probe["host"] == alias
            assert probe["mem_total_bytes"] > 0 and probe["uptime_s"] > 0
            assert [ct["name"] for ct in probe["containers"]] == ["vllm_node"]
            assert probe["gpus"][0]["name"] == "NVIDIA GB10"

            job = (await client.get(body["job"])).json()
            assert job["state"] == "succeeded" and job["attempts"] == 1
            assert job["result"]["host"] == alias and job["worker"] == "exec-a"
            assert job["finished_at"] >= job["started_at"] >= job["created_at"]

            hosts = (await client.get("/api/hosts")).json()
            assert hosts[0]["alias"] == alias and hosts[0]["state"]["up"] is True
            assert hosts[0]["state"]["probe"]["containers"][0]["name"] == "vllm_node"

            listed = (await client.get("/api/jobs")).json()
            assert [j["id"] for j in listed] == [body["job_id"]]


async def test_sse_replays_a_finished_job_and_resumes_after_last_event_id(settings: Any) -> None:
    alias = settings.hosts[0].alias
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            job_id = (await client.post(f"/api/hosts/{alias}/probe")).json()["job_id"]
            first = await stack.sse_events(client, f"/api/jobs/{job_id}/events")
            assert first[-1]["event"] == "done"
            again = await stack.sse_events(client, f"/api/jobs/{job_id}/events")
            assert again == first  # the whole history, from JetStream
            resumed = await stack.sse_events(
                client, f"/api/jobs/{job_id}/events", {"Last-Event-ID": first[0]["id"]}
            )
            assert resumed == first[1:]


async def test_repeated_msg_id_runs_once(settings: Any) -> None:
    alias = settings.hosts[0].alias
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        for _ in range(3):
            await bus.js.publish(
                c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": "same-key-1"}
            )
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            events = await stack.sse_events(client, "/api/jobs/same-key-1/events")
            assert [e["event"] for e in events] == ["accepted", "started", "done"]
            r1 = await client.post(f"/api/hosts/{alias}/probe", headers={"Idempotency-Key": "k-2"})
            r2 = await client.post(f"/api/hosts/{alias}/probe", headers={"Idempotency-Key": "k-2"})
            assert r1.json()["job_id"] == r2.json()["job_id"] == "k-2"
            assert (r1.json()["created"], r2.json()["created"]) == (True, False)
            events = await stack.sse_events(client, "/api/jobs/k-2/events")
            assert [e["event"] for e in events].count("started") == 1
        await _stream_drained(bus)  # work queue: every command acked, none duplicated
        info = await bus.js.stream_info(c.CMD_STREAM)
        assert info.state.last_seq == 2  # two commands stored: the repeats were dropped


async def test_malformed_command_on_the_bus_fails_and_the_worker_lives(settings: Any) -> None:
    alias = settings.hosts[0].alias
    async with stack.executor(settings) as bus:
        sub = await bus.js.subscribe("spark.evt.job.*.failed", ordered_consumer=True)
        await bus.js.publish(
            c.cmd_host(alias, "probe"), b"{not json", headers={"Nats-Msg-Id": "bad-1"}
        )
        await bus.js.publish(c.cmd_host(alias, "explode"), b"{}", headers={"Nats-Msg-Id": "bad-2"})
        await bus.js.publish(
            c.cmd_host(alias, "probe"), b'{"args": 5}', headers={"Nats-Msg-Id": "bad-3"}
        )
        await bus.js.publish(
            "spark.cmd.host.nosuchhost.probe", b"{}", headers={"Nats-Msg-Id": "bad-4"}
        )
        failed = {}
        for _ in range(4):
            msg = await sub.next_msg(timeout=10)
            ev = c.decode_event(msg.data)
            failed[ev.job_id] = ev.code
        assert failed == {
            "bad-1": "BAD_COMMAND",
            "bad-2": "UNKNOWN_ACTION",
            "bad-3": "BAD_COMMAND",
            "bad-4": "UNKNOWN_HOST",
        }
        for job_id in ("bad-1", "bad-2", "bad-3"):
            got = await bus.get_job(job_id)
            assert got is not None and got[0].state == "failed"
        # still serving
        await bus.js.publish(c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": "good-1"})
        done = await bus.js.subscribe(c.evt_job("good-1", "done"), ordered_consumer=True)
        assert c.decode_event((await done.next_msg(timeout=10)).data).kind == "done"
        await _stream_drained(bus)


async def test_http_bad_input_gets_clear_errors_and_queues_nothing(settings: Any) -> None:
    alias = settings.hosts[0].alias
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
        cases = [
            ("/api/hosts/nosuch/probe", b"", 404, "UNKNOWN_HOST"),
            ("/api/hosts/Bad.Alias/probe", b"", 404, "UNKNOWN_HOST"),
            (f"/api/hosts/{alias}/explode", b"", 400, "UNKNOWN_ACTION"),
            (f"/api/hosts/{alias}/probe", b"{not json", 400, "BAD_JSON"),
            (f"/api/hosts/{alias}/probe", b'{"surprise": 1}', 400, "BAD_JSON"),
            (f"/api/hosts/{alias}/probe", b'{"timeout_s": -1}', 400, "BAD_TIMEOUT"),
            (f"/api/hosts/{alias}/probe", b"{" + b" " * 70_000 + b"}", 413, "BODY_TOO_LARGE"),
        ]
        for path, data, status, code in cases:
            r = await client.post(path, content=data)
            assert r.status_code == status, (path, r.text)
            assert r.json()["code"] == code and r.json()["error"]
            assert "Traceback" not in r.text
        r = await client.post(f"/api/hosts/{alias}/probe", headers={"Idempotency-Key": "a.b"})
        assert (r.status_code, r.json()["code"]) == (400, "BAD_IDEMPOTENCY_KEY")
        r = await client.get("/api/jobs/nope")
        assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_JOB")
        r = await client.get("/api/jobs/nope/events")
        assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_JOB")
        r = await client.get("/api/nothing-here")
        assert (r.status_code, r.json()["code"]) == (404, "NOT_FOUND")
        assert (await client.get("/api/jobs")).json() == []
    nc = await nats.connect(settings.nats_url)
    info = await nc.jetstream().stream_info(c.CMD_STREAM)
    assert info.state.last_seq == 0  # nothing was ever queued
    await nc.close()


async def test_status_sees_workers_through_srv_ping(settings: Any) -> None:
    async with stack.executor(settings, "exec-a"), stack.executor(settings, "exec-b"):
        async with stack.signer(settings), stack.web(settings) as base:
            async with httpx.AsyncClient(base_url=base) as client:
                status = (await client.get("/api/status")).json()
    assert status["bus"]["connected"] is True
    seen = sorted((w["name"], w["metadata"]["worker"]) for w in status["workers"])
    assert seen == sorted(
        [
            (c.SIGNER_SERVICE, "signer-a"),
            (c.EXECUTOR_SERVICE, "exec-a"),
            (c.EXECUTOR_SERVICE, "exec-b"),
        ]
    )
    assert [h["alias"] for h in status["hosts"]] == [settings.hosts[0].alias]


async def _stream_drained(bus: Any) -> None:
    async def empty() -> bool:
        return (await bus.js.stream_info(c.CMD_STREAM)).state.messages == 0

    await stack.wait_for(empty, timeout=10)
