"""Worker processes SIGKILLed mid-work (issue 8): the blob signer while it streams 10,000-part
answers, the health leader in the middle of a restart decision. Real NATS, SeaweedFS checking
signatures, OpenSSH with the host simulator, the workers as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats

from app import contracts as c
from app import health
from app.errors import SparkError
from app.signer import chunks
from tests import stack
from tests.integration.test_blob_signer import admin_s3, bucket, signer_settings  # noqa: F401
from tests.integration.test_health import _swap, setup  # noqa: F401 (fixture)
from tests.servers import SeaweedS3, free_port
from workers.health import get_endpoint

MIB = 2**20
AUTH = {"Authorization": "Bearer tok-a-0123456789"}


class Procs:
    """Worker processes started by a test; all killed at its end."""

    def __init__(self, root: Path, settings: Any) -> None:
        self.config = stack.write_config(settings, root / "workers.yaml")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, kind: str, name: str) -> subprocess.Popen[bytes]:
        self.procs[name] = stack.worker_process(self.config, kind, name=name)
        return self.procs[name]

    def sigkill(self, name: str) -> None:
        proc = self.procs[name]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def big(key: str) -> dict[str, Any]:
    op = {"kind": "multipart_put", "parts": 10_000, "part_size_bytes": 64 * MIB}
    return {"rel_path": key, "op": op}


async def _signs(client: httpx.AsyncClient) -> bool:
    body = {"rel_path": "projects/ns-a/ready", "op": {"kind": "single_put"}}
    try:
        r = await client.post("/api/v1/blob/sign", json=body, headers=AUTH)
    except httpx.HTTPError:  # the front not listening yet
        return False
    return r.status_code == 200


async def _answered(client: httpx.AsyncClient, i: int) -> tuple[str, Any]:
    """One 10,000-part request: ("ok", urls) | ("error", (status, body)) | ("aborted",
    (status, bytes read)) when the body ended before its end (the client can tell)."""
    body = big(f"projects/ns-a/kill/{i}.bin")
    async with client.stream("POST", "/api/v1/blob/sign", json=body, headers=AUTH) as resp:
        got = b""
        try:
            async for piece in resp.aiter_bytes():
                got += piece
        except httpx.RemoteProtocolError:
            return "aborted", (resp.status_code, len(got))
    if resp.status_code != 200:
        return "error", (resp.status_code, msgspec.json.decode(got))
    return "ok", msgspec.json.decode(got)["partUrls"]


async def _on_bus(nc: Any, i: int) -> tuple[str, Any]:
    """One 10,000-part request as a plain bus client (chunked answer): ("ok", urls) |
    ("error", (code, chunks received before the error))."""
    body = msgspec.json.encode(big(f"projects/ns-a/kill/bus-{i}.bin"))
    got = 0
    try:
        async with chunks.request(nc, c.blob_sign("ns-a"), body, 5.0) as reply:
            pieces = []
            async for piece in reply.chunks():
                pieces.append(piece)
                got += 1
    except SparkError as exc:
        return "error", (exc.code, got)
    return "ok", msgspec.json.decode(b"".join(pieces))["partUrls"]


def killer(pid: int, mid_answer: bool) -> Any:
    """A callback for reply subjects: SIGKILL ``pid`` at the signer's first answer message
    (with ``mid_answer``, the first one of an answer that has more to come)."""

    async def on_reply(msg: Any) -> None:
        headers = msg.headers or {}
        if c.CHUNK_HEADER in headers and not (mid_answer and c.CHUNKS_HEADER in headers):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    return on_reply


def check_http(results: list[tuple[str, Any]]) -> None:
    """Each answer whole, a 503 {error, code}, or a body that visibly did not end."""
    assert any(kind != "ok" for kind, _ in results), "the kill interrupted nothing"
    for kind, detail in results:
        if kind == "ok":
            assert len(detail) == 10_000
        elif kind == "error":
            status, answer = detail
            assert status == 503 and set(answer) == {"error", "code"}, detail
            assert answer["code"] in ("SIGNER_UNAVAILABLE", "BUS_UNAVAILABLE"), answer
        else:
            assert detail[0] == 200, detail  # the headers had gone; the body did not end


async def test_signer_sigkilled_mid_answer(
    tmp_path: Path,
    nats_server: Any,
    s3_store: SeaweedS3,
    bucket: str,  # noqa: F811
) -> None:
    """A signer killed while it streams 10,000-part answers: a bus client's chunked answer
    ends in BUS_UNAVAILABLE (never a partial body), an HTTP client gets the whole answer, a
    503 {error, code} or a body that visibly did not end; no object exists for any of them;
    a new signer answers at once, nothing else restarted."""
    settings = signer_settings(tmp_path, nats_server.url, s3_store, bucket, signer_timeout_s=5.0)
    front_settings = msgspec.structs.replace(
        settings, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint_url=None,
        bind_port=free_port(),
    )  # fmt: skip
    base = f"http://127.0.0.1:{front_settings.bind_port}"
    procs = Procs(tmp_path, settings)
    front = stack.part_process(stack.write_config(front_settings, tmp_path / "web.yaml"), "web")
    watcher = await nats.connect(settings.nats_url)
    requester = await nats.connect(settings.nats_url)
    try:
        async with httpx.AsyncClient(
            base_url=base, timeout=60, limits=httpx.Limits(max_connections=64)
        ) as client:  # fmt: skip
            # 1. plain bus clients, killed while a chunked answer is half sent
            victim = procs.start("signer", "signer-a")
            await stack.wait_for(lambda: _signs(client), timeout=60, every=0.2)
            sub = await watcher.subscribe("_INBOX.>", cb=killer(victim.pid, mid_answer=True))
            await watcher.flush()
            on_bus = await asyncio.gather(*(_on_bus(requester, i) for i in range(16)))
            assert victim.wait(10) == -signal.SIGKILL
            await sub.unsubscribe()
            assert any(kind == "error" and detail[1] > 0 for kind, detail in on_bus), on_bus
            for kind, detail in on_bus:
                if kind == "ok":
                    assert len(detail) == 10_000
                else:
                    assert detail[0] in ("BUS_UNAVAILABLE", "SIGNER_UNAVAILABLE"), detail

            # 2. HTTP clients through the front, killed at the first answer
            victim = procs.start("signer", "signer-b")
            await stack.wait_for(lambda: _signs(client), timeout=60, every=0.2)
            sub = await watcher.subscribe("_INBOX.>", cb=killer(victim.pid, mid_answer=False))
            await watcher.flush()
            check_http(await asyncio.gather(*(_answered(client, i) for i in range(16))))
            assert victim.wait(10) == -signal.SIGKILL
            await sub.unsubscribe()

            # nothing claims to exist for a request that did not get its whole answer
            async with admin_s3(s3_store) as s3:
                listed = await s3.list_objects_v2(Bucket=bucket, Prefix="projects/ns-a/kill/")
            assert listed.get("KeyCount", 0) == 0

            procs.start("signer", "signer-c")  # the front, NATS and the store stay as they are
            await stack.wait_for(lambda: _signs(client), timeout=60, every=0.2)
            r = await client.post("/api/v1/blob/sign", json=big("projects/ns-a/after.bin"),
                                  headers=AUTH)  # fmt: skip
            assert r.status_code == 200
            urls = r.json()["partUrls"]
            assert len(urls) == 10_000
            assert (await client.put(urls[9_999], content=b"last part")).status_code == 200
            assert front.poll() is None
    finally:
        await watcher.close()
        await requester.close()
        front.terminate()
        front.wait(15)
        procs.close()


async def test_health_leader_sigkilled_mid_restart_decision(
    setup: Any,  # noqa: F811
    ssh_host: Any,
    tmp_path: Path,
) -> None:
    """The leader dies right after queueing an automatic restart: the other replica takes the
    lease, the restart is counted once (the next decision is "limit 1"), and only one restart
    is ever made."""
    settings, _ = setup
    settings.health_restart_max = 1
    settings.health_restart_gap_s = 1.0
    settings.health_restart_grace_s = 1.0
    settings.health_deep_s = 0.3
    alias = settings.hosts[0].alias
    vllm = c.vllm_endpoint(alias)
    procs = Procs(tmp_path, settings)
    try:
        async with stack.executor(settings) as bus, stack.web(settings) as base:
            async with httpx.AsyncClient(base_url=base, timeout=180) as client:
                await _swap(client, alias)
                ssh_host.sim_config(fail_mode="wedge", wedge_after_s=0.0)
                r = await client.post(f"/api/hosts/{alias}/restart")  # by hand, into the wedge
                await stack.sse_events(client, r.json()["events"])
            by_hand = len(_docker_restarts(ssh_host))
            watcher = await nats.connect(settings.nats_url)
            accepted: asyncio.Queue[c.Event] = asyncio.Queue()

            async def on_accepted(msg: Any) -> None:
                event = c.decode_event(msg.data)
                if (event.kind, event.action) == ("accepted", "restart"):
                    await accepted.put(event)

            await watcher.subscribe(c.EVT_WILDCARD, cb=on_accepted)
            procs.start("health", "health-a")
            first = await stack.wait_for(lambda: health.leader(bus), timeout=30)
            procs.start("health", "health-b")
            t0 = c.now()
            queued = await asyncio.wait_for(accepted.get(), timeout=90)
            procs.sigkill(first["worker"])  # mid-round: the decision's job is queued
            survivor = "health-b" if first["worker"] == "health-a" else "health-a"
            await watcher.close()

            async def limited() -> list[c.Event] | None:
                got = [e for _, e in await health.read_events(
                    bus, (c.evt_service(vllm, "restart"),), t0)]  # fmt: skip
                mine = [e for e in got if e.worker == survivor and "limit 1" in (e.message or "")]
                return got if mine else None

            decisions = await stack.wait_for(limited, timeout=120, every=0.3)
            lead = await health.leader(bus)
            assert lead is not None and lead["worker"] == survivor
            ep = await get_endpoint(bus, vllm)
            assert ep is not None and ep.state == "wedged" and len(ep.restarts) == 1
            requested = [e for e in decisions if e.data["decision"] == "requested"]
            assert all(e.worker == first["worker"] for e in requested), [e.data for e in decisions]
            assert [e.data["job_id"] for e in requested] in ([], [queued.job_id])
            record = await stack.wait_for(lambda: final_job(base, queued.job_id), timeout=120)
            assert record["requested_by"] == "health"
            assert len(_docker_restarts(ssh_host)) == by_hand + 1  # one automatic restart
    finally:
        procs.close()


async def final_job(base: str, job_id: str) -> dict[str, Any] | None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.get(f"/api/jobs/{job_id}")
        assert r.status_code == 200, r.text
        data: dict[str, Any] = r.json()
        return data if data["state"] in c.FINAL_STATES else None


def _docker_restarts(host: Any) -> list[dict[str, Any]]:
    return [cmd for cmd in host.commands("docker") if cmd["argv"][1:2] == ["restart"]]
