"""The swap lock and the schedule registry through the real web front (uvicorn + real NATS)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import contracts as c
from app import swaplock
from app.bus import Bus, connect
from app.config import HostConfig, Settings
from tests import stack

LOCK = "/api/swap/lock"


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, unique: str) -> Settings:
    host = HostConfig(alias=f"gpu-{unique}", address="localhost", transport="local")
    return stack.make_settings(tmp_path / "data", nats_server.url, [host])


@contextlib.asynccontextmanager
async def front(
    settings: Settings, logs: pytest.LogCaptureFixture | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The web front and a client; with ``logs``, every log record (DEBUG up) of the run is
    captured, re-attached after Litestar's logging set-up replaced the root handlers."""
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base, timeout=30) as cl:
        if logs is None:
            yield cl
            return
        root = logging.getLogger()
        level = root.level
        root.addHandler(logs.handler)
        root.setLevel(logging.DEBUG)
        try:
            yield cl
        finally:
            root.removeHandler(logs.handler)
            root.setLevel(level)


@contextlib.asynccontextmanager
async def bus_for(settings: Settings) -> AsyncIterator[Bus]:
    bus = await connect(settings, name="coordination-test")
    try:
        yield bus
    finally:
        await bus.close()


async def acquire(client: httpx.AsyncClient, holder: str, **kw: Any) -> httpx.Response:
    headers = kw.pop("headers", None)
    return await client.post(LOCK, json={"holder": holder, **kw}, headers=headers)


async def test_lock_life_cycle(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with front(settings, caplog) as client, bus_for(settings) as bus:
        assert (await client.get(LOCK)).json() == {"held": False}

        r = await acquire(client, "alice", ttl_seconds=600, note="eval run")
        assert r.status_code == 200, r.text
        got = r.json()
        token = got["token"]
        assert len(token) >= 32
        assert got["held"] is True and got["holder"] == "alice" and got["note"] == "eval run"
        assert 599 <= got["seconds_remaining"] <= 600
        assert got["acquired_at"].endswith("Z") and got["expires_at"] > got["acquired_at"]

        shown = (await client.get(LOCK)).json()
        assert set(shown) == {
            "held", "holder", "acquired_at", "expires_at", "seconds_remaining", "note"
        }  # fmt: skip
        assert shown["holder"] == "alice" and token not in str(shown)
        stored = (await bus.kv[c.LOCKS_BUCKET].get(c.SWAP_LOCK_KEY)).value or b""
        assert token.encode() not in stored
        assert hashlib.sha256(token.encode()).hexdigest().encode() in stored

        r = await acquire(client, "bob")
        assert r.status_code == 409
        assert r.json()["code"] == "LOCK_HELD" and "alice" in r.json()["error"]
        assert r.json()["holder"] == "alice" and r.json()["seconds_remaining"] > 0
        assert token not in r.text

        r = await acquire(client, "alice")  # the same name without the token is not enough
        assert (r.status_code, r.json()["code"]) == (409, "LOCK_HELD")
        r = await acquire(client, "bob", headers={swaplock.TOKEN_HEADER: token})
        assert (r.status_code, r.json()["code"]) == (409, "LOCK_HELD")

        r = await acquire(client, "alice", ttl_seconds=3600, headers={"X-Lock-Token": token})
        assert r.status_code == 200, r.text
        ext = r.json()
        assert ext["acquired_at"] == got["acquired_at"] and ext["note"] == "eval run"
        assert ext["seconds_remaining"] > 3000 and ext["token"] == token
        r = await acquire(client, "alice", ttl_seconds=900, token=token, note="longer")
        assert r.status_code == 200 and r.json()["note"] == "longer"

        for headers in ({}, {"X-Lock-Token": "not-the-token"}):
            r = await client.delete(LOCK, headers=headers)
            assert r.status_code == 423, r.text
            assert r.json()["code"] == "LOCKED" and r.json()["error"]
        assert (await client.get(LOCK)).json()["held"] is True

        r = await client.request("DELETE", LOCK, json={"token": token})
        assert (r.status_code, r.json()) == (200, {"held": False})
        assert (await client.get(LOCK)).json() == {"held": False}
        r = await client.delete(LOCK)  # not held: idempotent, with or without a token
        assert (r.status_code, r.json()) == (200, {"held": False})
        r = await client.delete(LOCK, headers={"X-Lock-Token": token})
        assert (r.status_code, r.json()) == (200, {"held": False})

        r = await acquire(client, "bob")  # free again, even after a delete marker
        assert r.status_code == 200 and r.json()["token"] != token
    assert token not in caplog.text
    assert "acquired by 'alice'" in caplog.text  # the log did record the lock's life
    assert "released by 'alice'" in caplog.text


async def test_an_expired_lock_is_free(settings: Settings) -> None:
    async with front(settings) as client:
        first = await acquire(client, "alice", ttl_seconds=1)
        assert first.status_code == 200
        assert (await acquire(client, "bob")).status_code == 409

        async def free() -> bool:
            return (await client.get(LOCK)).json() == {"held": False}

        await stack.wait_for(free, timeout=3)
        r = await acquire(client, "bob", ttl_seconds=60)
        assert r.status_code == 200 and r.json()["holder"] == "bob"
        # alice's stale token neither extends nor releases bob's lock
        stale = {"X-Lock-Token": first.json()["token"]}
        assert (await acquire(client, "alice", headers=stale)).status_code == 409
        assert (await client.delete(LOCK, headers=stale)).status_code == 423


@pytest.mark.parametrize(
    "body, field",
    [
        ({"holder": "a", "ttl_seconds": 0}, "ttl_seconds"),
        ({"holder": "a", "ttl_seconds": 86401}, "ttl_seconds"),
        ({"holder": "a", "ttl_seconds": "x"}, "ttl_seconds"),
        ({"holder": "a", "ttl_seconds": 1.5}, "ttl_seconds"),
        ({"holder": "a", "ttl_seconds": True}, "ttl_seconds"),
        ({"holder": "a", "ttl_seconds": None}, "ttl_seconds"),
        ({}, "holder"),
        ({"holder": ""}, "holder"),
        ({"holder": 5}, "holder"),
        ({"holder": "a\nb"}, "holder"),
        ({"holder": "x" * 129}, "holder"),
        ({"holder": "a", "note": "n\x00"}, "note"),
        ({"holder": "a", "note": "n" * 1001}, "note"),
        ({"holder": "a", "token": 7}, "token"),
        ([1, 2], "body"),
    ],
)
async def test_bad_acquire_bodies_get_400(settings: Settings, body: Any, field: str) -> None:
    async with front(settings) as client:
        r = await client.post(LOCK, json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith(f"{field}:") and r.json()["code"]
        r = await client.post(LOCK, content=b"{not json")
        assert (r.status_code, r.json()["code"]) == (400, "BAD_JSON")
        assert (await client.get(LOCK)).json() == {"held": False}


async def test_ttl_errors_have_their_code(settings: Settings) -> None:
    async with front(settings) as client:
        for ttl in (0, 86401, "x"):
            r = await acquire(client, "a", ttl_seconds=ttl)
            assert (r.status_code, r.json()["code"]) == (400, "BAD_TTL")
        r = await acquire(client, "a")  # default 900
        assert r.status_code == 200 and 899 <= r.json()["seconds_remaining"] <= 900
        r = await acquire(client, "b", ttl_seconds=86400)
        assert r.status_code == 409


async def test_force_release(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    async with front(settings, caplog) as client:
        token = (await acquire(client, "alice")).json()["token"]
        r = await client.delete(LOCK, params={"force": "true"})
        assert (r.status_code, r.json()) == (200, {"held": False})
        assert (await client.get(LOCK)).json() == {"held": False}
        assert (await client.delete(LOCK, params={"force": "true"})).status_code == 200
        r = await client.delete(LOCK, params={"force": "maybe"})
        assert r.status_code == 400 and r.json()["code"]
    assert "swap lock of 'alice' force-released" in caplog.text
    assert token not in caplog.text


async def test_concurrent_acquirers_exactly_one_wins(settings: Settings) -> None:
    """Across two web replicas sharing NATS: one 200, every other 409, round after round —
    both from a free key (create) and over an expired lock (update at a revision)."""
    async with stack.web(settings) as base_a, stack.web(settings) as base_b:
        async with (
            httpx.AsyncClient(base_url=base_a, timeout=30) as a,
            httpx.AsyncClient(base_url=base_b, timeout=30) as b,
        ):
            for round_ in range(6):
                calls = [
                    acquire((a, b)[i % 2], f"holder-{round_}-{i}", ttl_seconds=60) for i in range(8)
                ]
                results = await asyncio.gather(*calls)
                statuses = sorted(r.status_code for r in results)
                assert statuses == [200] + [409] * 7, (round_, [r.text for r in results])
                winner = next(r.json() for r in results if r.status_code == 200)
                assert (await b.get(LOCK)).json()["holder"] == winner["holder"]
                assert all(r.json()["holder"] == winner["holder"] for r in results if r.is_error)
                # the next round starts from a deleted key (even) or an expired lock (odd)
                await a.delete(LOCK, params={"force": "true"})
                if round_ % 2 == 0:
                    assert (await acquire(a, "short", ttl_seconds=1)).status_code == 200
                    await stack.wait_for(lambda: _free(a), timeout=3)


async def _free(client: httpx.AsyncClient) -> bool:
    return (await client.get(LOCK)).json() == {"held": False}


async def test_two_buses_racing_directly(settings: Settings) -> None:
    """The compare-and-set holds between separate NATS connections, with no HTTP in between."""
    async with bus_for(settings) as one, bus_for(settings) as two:
        for round_ in range(10):
            reqs = [
                swaplock.AcquireRequest(
                    holder=f"h{round_}-{i}", ttl_seconds=60, note=None, token=None
                )
                for i in range(6)
            ]
            outcomes = await asyncio.gather(
                *(swaplock.acquire((one, two)[i % 2], r) for i, r in enumerate(reqs)),
                return_exceptions=True,
            )
            won = [o for o in outcomes if isinstance(o, dict)]
            lost = [o for o in outcomes if isinstance(o, swaplock.LockHeld)]
            assert (len(won), len(lost)) == (1, 5), outcomes
            await swaplock.release(one, won[0]["token"])


async def test_require(settings: Settings) -> None:
    async with front(settings) as client, bus_for(settings) as bus:
        await swaplock.require(bus, None)  # free: anyone may swap
        await swaplock.require(bus, "anything")
        token = (await acquire(client, "alice", ttl_seconds=60)).json()["token"]
        for wrong in (None, "", "not-the-token"):
            with pytest.raises(swaplock.Locked) as info:
                await swaplock.require(bus, wrong or None)
            assert (info.value.status, info.value.code) == (423, "LOCKED")
            assert "alice" in info.value.message and token not in info.value.message
        await swaplock.require(bus, token)
        await client.delete(LOCK, headers={"X-Lock-Token": token})
        await swaplock.require(bus, None)

        short = (await acquire(client, "bob", ttl_seconds=1)).json()["token"]
        with pytest.raises(swaplock.Locked):
            await swaplock.require(bus, None)
        await swaplock.require(bus, short)

        async def expired() -> bool:
            try:
                await swaplock.require(bus, None)
            except swaplock.Locked:
                return False
            return True

        await stack.wait_for(expired, timeout=3)


async def test_schedule_registry(settings: Settings) -> None:
    async with front(settings) as client, bus_for(settings) as bus:
        assert (await client.get("/api/schedule")).json() == []
        r = await client.post(
            "/api/schedule",
            json={
                "name": "nightly eval",
                "cron": "0 2 * * *",
                "description": "runs the eval suite against whatever is loaded",
                "owner": "alice",
                "model": "qwen3-30b",
                "host": "spark1",
            },
        )
        assert r.status_code == 201, r.text
        first = r.json()
        assert first["name"] == "nightly eval" and first["cron"] == "0 2 * * *"
        assert first["id"] and first["created_at"].endswith("Z")
        r = await client.post("/api/schedule", json={"name": "batch embed"})
        assert r.status_code == 201
        second = r.json()
        assert second["cron"] is None and second["owner"] is None

        listed = (await client.get("/api/schedule")).json()
        assert sorted(e["id"] for e in listed) == sorted([first["id"], second["id"]])
        assert next(e for e in listed if e["id"] == first["id"]) == first
        stored = await bus.kv[c.SETTINGS_BUCKET].get(f"schedule.{first['id']}")
        assert b"nightly eval" in (stored.value or b"")

        r = await client.delete(f"/api/schedule/{first['id']}")
        assert (r.status_code, r.json()) == (200, first)
        assert [e["id"] for e in (await client.get("/api/schedule")).json()] == [second["id"]]
        for missing in (first["id"], "nope", "a.b", "0" * 12):
            r = await client.delete(f"/api/schedule/{missing}")
            assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_SCHEDULE"), missing


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "name"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "a\tb"}, "name"),
        ({"name": "ok", "cron": 5}, "cron"),
        ({"name": "ok", "description": "d" * 2001}, "description"),
        ({"name": "ok", "owner": "o\x1b[31m"}, "owner"),
        ({"name": "ok", "model": ["m"]}, "model"),
        ({"name": "ok", "host": "h\r\n"}, "host"),
        ("just a string", "body"),
    ],
)
async def test_schedule_refuses_bad_entries(settings: Settings, body: Any, field: str) -> None:
    async with front(settings) as client:
        r = await client.post("/api/schedule", json=body)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith(f"{field}:") and r.json()["code"]
        assert (await client.get("/api/schedule")).json() == []


async def test_the_executor_enforces_the_lock_on_bus_commands(settings: Settings) -> None:
    """A program publishing straight onto the bus meets the same lock as HTTP clients: a
    swap/stop/restart without the token fails with LOCKED (nothing runs); with the token in
    the Spark-Lock-Token header it runs; actions that do not change the model are not held."""
    alias = settings.hosts[0].alias
    async with stack.executor(settings) as bus, front(settings) as client:
        token = (await client.post(LOCK, json={"holder": "nightly-eval"})).json()["token"]

        async def run(action: str, msg_id: str, headers: dict[str, str]) -> list[dict[str, Any]]:
            await bus.js.publish(
                c.cmd_host(alias, action), b"{}", headers={"Nats-Msg-Id": msg_id, **headers}
            )
            await stack.wait_for(lambda: bus.get_job(msg_id), timeout=20)
            return await stack.sse_events(client, f"/api/jobs/{msg_id}/events")

        refused = await run("stop", "bus-stop-1", {})
        assert refused[-1]["event"] == "failed"
        assert refused[-1]["data"]["code"] == "LOCKED"
        assert "nightly-eval" in refused[-1]["data"]["message"]
        assert token not in str(refused)
        assert [e["event"] for e in refused] == ["failed"]  # never started

        wrong = await run("stop", "bus-stop-2", {c.LOCK_TOKEN_HEADER: "not-the-token"})
        assert wrong[-1]["data"]["code"] == "LOCKED"

        allowed = await run("stop", "bus-stop-3", {c.LOCK_TOKEN_HEADER: token})
        assert allowed[-1]["event"] == "done", allowed[-1]
        record = (await client.get("/api/jobs/bus-stop-3")).json()
        assert token not in str(record)

        probe = await run("probe", "bus-probe-1", {})
        assert probe[-1]["event"] == "done"

        # over HTTP the X-Lock-Token header reaches the executor with the command
        r = await client.post(f"/api/hosts/{alias}/stop", headers={swaplock.TOKEN_HEADER: token})
        assert r.status_code == 202, r.text
        events = await stack.sse_events(client, r.json()["events"])
        assert events[-1]["event"] == "done", events[-1]
