"""Faults during transfers (issue 8): the object store down mid-push (the push fails with a
clear code, nothing claims to be complete, the signer answers 503 and recovers by itself, a
re-run resumes with ListParts), and NATS restarted mid-push and mid-pull (both finish once,
their events neither lost nor doubled). Real NATS, SeaweedFS checking signatures, curl on
local hosts held at a chosen request by a PATH shim."""

from __future__ import annotations

import asyncio
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions
import httpx
import msgspec
import pytest

from app import contracts as c
from app import jobs
from app.bus import Bus
from app.config import HostConfig, Settings
from tests import stack
from tests.integration.test_blob_signer import admin_s3, bucket  # noqa: F401 (fixture)
from tests.servers import SeaweedS3

MIB = 2**20
TOKEN = "tok-faults-0123456789"
HOLD_CURL = """#!/bin/bash
# Counts part uploads (curl -D) as "put" and downloads (-o *.spark-partial) as "get". With
# $DIR/hold_<kind> holding N, the Nth such call writes $DIR/waiting_<kind>, then waits for
# $DIR/go_<kind> before it runs.
dir=$(dirname -- "$0")
kind=
case " $* " in *" -D "*) kind=put;; *.spark-partial*) kind=get;; esac
if [ -n "$kind" ]; then
  n=$(( $(cat "$dir/count_$kind" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$dir/count_$kind"
  if [ -e "$dir/hold_$kind" ] && [ "$n" -eq "$(cat "$dir/hold_$kind")" ]; then
    touch "$dir/waiting_$kind"
    while [ ! -e "$dir/go_$kind" ]; do sleep 0.05; done
  fi
fi
exec /usr/bin/curl "$@"
"""


class Curl:
    """The held-curl shim first on PATH (local hosts run their scripts with this PATH)."""

    def __init__(self, root: Path) -> None:
        self.dir = root
        root.mkdir()
        (root / "curl").write_text(HOLD_CURL)
        (root / "curl").chmod(stat.S_IRWXU)

    def hold(self, kind: str, nth: int) -> None:
        (self.dir / f"hold_{kind}").write_text(str(nth))

    async def wait_held(self, kind: str) -> None:
        await stack.wait_for(lambda: (self.dir / f"waiting_{kind}").exists(), timeout=60)

    def release(self, kind: str) -> None:
        (self.dir / f"go_{kind}").touch()

    def reset(self) -> None:
        for name in os.listdir(self.dir):
            if name != "curl":
                (self.dir / name).unlink()

    def count(self, kind: str) -> int:
        path = self.dir / f"count_{kind}"
        return int(path.read_text()) if path.exists() else 0


@pytest.fixture
def curl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Curl]:
    shim = Curl(tmp_path / "curlshim")
    monkeypatch.setenv("PATH", f"{shim.dir}:{os.environ['PATH']}")
    yield shim
    for kind in ("put", "get"):
        shim.release(kind)  # never leave a host script waiting


def settings_for(root: Path, nats_url: str, store: SeaweedS3, name: str, **kw: Any) -> Settings:
    hosts = [HostConfig(alias=a, address="localhost", transport="local") for a in ("ha", "hb")]
    return stack.make_settings(
        root / "data", nats_url, hosts, command_timeout_s=120.0,
        s3_endpoint_url=store.endpoint_url, s3_region=store.region, s3_bucket=name,
        s3_access_key_id=store.access_key, s3_secret_access_key=store.secret_key,
        signer_tokens={TOKEN: "ns-a"}, **kw,
    )  # fmt: skip


async def finish(bus: Bus, job_id: str) -> tuple[list[c.Event], c.JobRecord]:
    """Every event of the job until its final one, then its record."""
    sub = await bus.js.subscribe(c.evt_job_filter(job_id), ordered_consumer=True)
    events: list[c.Event] = []
    try:
        while not events or events[-1].kind not in c.FINAL_KINDS:
            events.append(c.decode_event((await sub.next_msg(timeout=180)).data))
    finally:
        await sub.unsubscribe()
    return events, await jobs.get(bus, job_id)


def assert_once(events: list[c.Event]) -> None:
    """One accepted, one started, one final event, and no event published twice."""
    kinds = [e.kind for e in events]
    assert kinds.count("accepted") == kinds.count("started") == 1, kinds
    assert sum(k in c.FINAL_KINDS for k in kinds) == 1 and kinds[0] == "accepted", kinds
    encoded = [msgspec.json.encode(e) for e in events]
    assert len(set(encoded)) == len(encoded), "an event arrived twice"


def push_args(src: Path, prefix: str) -> dict[str, Any]:
    return {"path": str(src), "rel_path": prefix, "namespace": "ns-a",
            "part_size_bytes": 5 * MIB, "parallel": 1}  # fmt: skip


async def object_sha256(store: SeaweedS3, name: str, key: str) -> str | None:
    """The object's sha256, or None when there is no such object."""
    async with admin_s3(store) as s3:
        try:
            obj = await s3.get_object(Bucket=name, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return hashlib.sha256(await obj["Body"].read()).hexdigest()


@pytest.fixture
async def own_store(tmp_path: Path) -> AsyncIterator[tuple[SeaweedS3, str]]:
    """A store of this test's own (it is stopped and started), with a bucket."""
    store = SeaweedS3(tmp_path / "s3").start()
    try:
        await store_answers(store)
        async with admin_s3(store) as s3:
            await s3.create_bucket(Bucket="faults")
        yield store, "faults"
    finally:
        store.close()


async def store_answers(store: SeaweedS3) -> None:
    async def up() -> bool:
        try:
            async with admin_s3(store) as s3:
                await s3.list_buckets()
            return True
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False

    await stack.wait_for(up, timeout=60, every=0.2)


async def test_store_down_mid_push_fails_clearly_then_resumes(
    tmp_path: Path, nats_server: Any, own_store: tuple[SeaweedS3, str], curl: Curl
) -> None:
    store, bucket_name = own_store
    settings = settings_for(tmp_path, nats_server.url, store, bucket_name)
    src = tmp_path / "ha" / "model"
    src.mkdir(parents=True)
    data = os.urandom(12 * MIB + 321)  # three parts of 5 MiB
    (src / "weights.bin").write_bytes(data)
    prefix, key = "projects/ns-a/down", "projects/ns-a/down/weights.bin"
    multipart = {
        "rel_path": "projects/ns-a/other.bin",
        "op": {"kind": "multipart_put", "parts": 2, "part_size_bytes": 5 * MIB},
    }
    auth = {"Authorization": f"Bearer {TOKEN}"}
    async with stack.signer(settings), stack.executor(settings) as bus, stack.web(
        settings
    ) as base, httpx.AsyncClient(base_url=base, timeout=60) as client:  # fmt: skip
        curl.hold("put", 2)  # part 1 goes up; the store dies before part 2
        job, _ = await jobs.submit(bus, settings, "ha", "push", push_args(src, prefix))
        await curl.wait_held("put")
        store.stop()
        curl.release("put")
        events, record = await finish(bus, job.id)
        assert (record.state, record.code) == ("failed", "PUSH_FAILED"), record.error
        assert "2 part(s) of weights.bin not uploaded" in (record.error or "")
        assert events[-1].kind == "failed" and events[-1].code == "PUSH_FAILED"
        assert_once(events)

        # while the store is down the signer says so for what needs it (a new upload)
        r = await client.post("/api/v1/blob/sign", json=multipart, headers=auth)
        assert r.status_code == 503 and r.json()["code"] == "STORE_UNAVAILABLE", r.text
        assert set(r.json()) == {"error", "code"}

        store.start()  # same ports and data: nothing else is restarted
        await store_answers(store)
        assert await object_sha256(store, bucket_name, key) is None  # no object claimed
        assert await object_sha256(store, bucket_name, f"{prefix}/manifest.json") is None

        async def signs() -> bool:
            r = await client.post("/api/v1/blob/sign", json=multipart, headers=auth)
            return r.status_code == 200 and len(r.json()["partUrls"]) == 2

        await stack.wait_for(signs, timeout=30, every=0.5)

        curl.reset()
        job, _ = await jobs.submit(bus, settings, "ha", "push", push_args(src, prefix))
        events, record = await finish(bus, job.id)
        assert record.state == "succeeded", (record.error, record.code)
        assert_once(events)
        assert record.result["skipped_bytes"] == 5 * MIB  # part 1, found with ListParts
        assert curl.count("put") == 2  # parts 2 and 3 only
    assert await object_sha256(store, bucket_name, key) == hashlib.sha256(data).hexdigest()


async def test_nats_restarted_mid_push_and_mid_pull(
    tmp_path: Path,
    nats_server: Any,
    s3_store: SeaweedS3,
    bucket: str,  # noqa: F811
    curl: Curl,
) -> None:
    # ack_wait well above a restart's length (production: 30 s): no takeover, one attempt
    settings = settings_for(tmp_path, nats_server.url, s3_store, bucket, ack_wait_s=10.0)
    src, dst = tmp_path / "ha" / "model", tmp_path / "hb" / "model"
    src.mkdir(parents=True)
    files = {"weights.bin": os.urandom(12 * MIB + 321), "config.json": b'{"a": 1}'}
    for name, content in files.items():
        (src / name).write_bytes(content)
    prefix = "projects/ns-a/nats-restart"
    async with stack.signer(settings), stack.executor(settings) as bus:
        curl.hold("put", 3)  # config.json's part, then weights part 1; held before part 2
        job, _ = await jobs.submit(bus, settings, "ha", "push", push_args(src, prefix))
        await curl.wait_held("put")
        await asyncio.to_thread(nats_server.restart)
        curl.release("put")
        events, record = await finish(bus, job.id)
        assert record.state == "succeeded", (record.error, record.code)
        assert record.attempts == 1
        assert_once(events)
        assert record.result["bytes"] == sum(map(len, files.values()))
        progress = [e.data for e in events if e.kind == "progress" and isinstance(e.data, dict)]
        assert progress[-1]["bytes"] == progress[-1]["total"] == record.result["bytes"]

        curl.hold("get", 1)
        pull = {"path": str(dst), "rel_path": prefix, "namespace": "ns-a", "parallel": 1}
        job, _ = await jobs.submit(bus, settings, "hb", "pull", pull)
        await curl.wait_held("get")
        await asyncio.to_thread(nats_server.restart)
        curl.release("get")
        events, record = await finish(bus, job.id)
        assert record.state == "succeeded", (record.error, record.code)
        assert record.attempts == 1 and record.result["skipped_bytes"] == 0
        assert_once(events)
    assert {p.name: p.read_bytes() for p in dst.iterdir()} == files
    got = await object_sha256(s3_store, bucket, f"{prefix}/weights.bin")
    assert got == hashlib.sha256(files["weights.bin"]).hexdigest()
