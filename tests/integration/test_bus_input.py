"""Malformed and oversized messages on every subject the workers consume: each gets a clear
refusal (a ``failed`` event, an error reply, or nothing for a subject without a reply), nothing
half-done is left behind, and the worker goes on serving. Real NATS, the executor against a
real sshd host, the blob signer; other programs publish on these subjects (docs/subjects.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
import pytest

from app import contracts as c
from app.config import HostConfig
from tests import stack


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str) -> Any:
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path)
    )


async def _failed_events(bus: Any, count: int) -> dict[str, c.Event]:
    sub = await bus.js.subscribe("spark.evt.job.*.failed", ordered_consumer=True)
    try:
        found = {}
        while len(found) < count:
            event = c.decode_event((await sub.next_msg(timeout=10)).data)
            assert event.job_id is not None
            found[event.job_id] = event
        return found
    finally:
        await sub.unsubscribe()


async def _drained(bus: Any) -> None:
    async def empty() -> bool:
        return (await bus.js.stream_info(c.CMD_STREAM)).state.messages == 0

    await stack.wait_for(empty, timeout=10)


async def test_bad_commands_fail_with_their_code_and_the_executor_serves_on(settings: Any) -> None:
    alias = settings.hosts[0].alias
    subject = c.cmd_host(alias, "probe")
    bodies = {
        "binary-1": bytes(range(256)) * 4,
        "deep-1": b"[" * 5000 + b"]" * 5000,  # nesting a naive decoder would recurse on
        "type-1": b'{"timeout_s": "soon"}',
        "extra-1": b'{"args": {}, "rm": "-rf /"}',  # unknown fields are refused, not ignored
    }
    async with stack.executor(settings) as bus:
        # over 64 KiB: the stream itself refuses it, in the PubAck; no job, nothing queued
        big = msgspec.json.encode({"args": {"pad": "x" * c.MAX_COMMAND_BYTES}})
        with pytest.raises(nats.js.errors.BadRequestError, match="message size exceeds"):
            await bus.js.publish(subject, big, headers={"Nats-Msg-Id": "big-1"})
        assert await bus.get_job("big-1") is None
        for msg_id, body in bodies.items():
            await bus.js.publish(subject, body, headers={"Nats-Msg-Id": msg_id})
        # a message id that is no job id: the job is named by its stream sequence instead
        await bus.js.publish(subject, b"{not json", headers={"Nats-Msg-Id": "bad id; rm -rf"})
        failed = await _failed_events(bus, len(bodies) + 1)
        named = {k: v for k, v in failed.items() if not k.startswith("cmd-")}
        assert {k: v.code for k, v in named.items()} == dict.fromkeys(bodies, "BAD_COMMAND")
        by_seq = [v for k, v in failed.items() if k.startswith("cmd-")]
        assert [v.code for v in by_seq] == ["BAD_COMMAND"]
        for job_id in failed:
            got = await bus.get_job(job_id)
            assert got is not None and got[0].state == "failed", job_id
            assert got[0].started_at is None  # nothing ran on the host
            assert len(c.encode(got[0])) < 4096  # the body was not copied in
        await _drained(bus)  # acknowledged once, not redelivered
        await bus.js.publish(subject, b"{}", headers={"Nats-Msg-Id": "good-1"})
        done = await bus.js.subscribe(c.evt_job("good-1", "done"), ordered_consumer=True)
        assert c.decode_event((await done.next_msg(timeout=10)).data).code is None


async def test_cancel_with_garbage_for_no_job_changes_nothing(settings: Any) -> None:
    alias = settings.hosts[0].alias
    async with stack.executor(settings) as bus:
        with pytest.raises(nats.errors.NoRespondersError):
            await bus.nc.request(c.cmd_job_cancel("nosuchjob"), b"\xff" * 70_000, timeout=2)
        await bus.js.publish(c.cmd_host(alias, "probe"), b"{}", headers={"Nats-Msg-Id": "after"})
        done = await bus.js.subscribe(c.evt_job("after", "done"), ordered_consumer=True)
        assert c.decode_event((await done.next_msg(timeout=10)).data).kind == "done"
        assert await bus.get_job("nosuchjob") is None


@pytest.fixture
def signer_settings(tmp_path: Path, nats_server: Any) -> Any:
    local = HostConfig(alias="local", address="localhost", transport="local")
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [local],
        s3_endpoint_url="http://127.0.0.1:9",  # never called: single presigns need no store
        s3_bucket="fleet", s3_access_key_id="AKIDTEST", s3_secret_access_key="never-shown",
    )  # fmt: skip


async def test_bad_sign_requests_get_error_replies_and_the_signer_serves_on(
    signer_settings: Any,
) -> None:
    cases = [
        (b"{not json", "400", "BAD_REQUEST"),
        (bytes(range(256)), "400", "BAD_REQUEST"),
        (b'{"rel_path": 5, "op": {"kind": "single_get"}}', "400", "BAD_REQUEST"),
        (b" " * 1_000_000, "400", "BODY_TOO_LARGE"),
        (b'{"rel_path": "projects/ns-b/x.bin", "op": {"kind": "single_get"}}', "403",
         "OUTSIDE_NAMESPACE"),
    ]  # fmt: skip
    async with stack.signer(signer_settings) as bus:
        for body, status, code in cases:
            msg = await bus.nc.request(c.blob_sign("ns-a"), body, timeout=10)
            headers = msg.headers or {}
            assert headers.get("Nats-Service-Error-Code") == status, (body[:40], headers)
            answer = msgspec.json.decode(msg.data)
            assert answer["code"] == code, (body[:40], answer)
            assert "never-shown" not in msg.data.decode()
        body = b'{"rel_path": "projects/ns-a/w.bin", "op": {"kind": "single_get"}}'
        good = await bus.nc.request(c.blob_sign("ns-a"), body, timeout=10)
        assert "Nats-Service-Error" not in (good.headers or {})
        assert msgspec.json.decode(good.data)["url"].startswith(
            "http://127.0.0.1:9/fleet/projects/ns-a/w.bin?"
        )
