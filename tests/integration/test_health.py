"""The health loop end to end: real NATS, a real sshd host with the simulator, the executor, the
web front. Probes become state and events; a wedged model is restarted within the policy; a
short outage is caught with its duration and outlives the web front; client reports are kept
without flipping state; /metrics is valid Prometheus text without secrets."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog, health
from app import contracts as c
from app.bus import Bus, connect
from app.config import HostConfig, Settings
from tests import stack
from tests.servers import free_port
from workers import health as health_worker

SECRETS = {"hf_token": "hf_SECRET_7f3a", "webhook_secret": "hook-SECRET-91",
           "signer_tokens": {"tok-SECRET-55": "ns-a"}}  # fmt: skip


@contextlib.asynccontextmanager
async def health_loop(settings: Settings, name: str = "health-a") -> AsyncIterator[Bus]:
    bus = await connect(settings, name=name)
    teardown = await health_worker.start(bus, settings, name)
    try:
        yield bus
    finally:
        await teardown()
        await bus.close()


@pytest.fixture
def setup(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Settings, int]:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    empty = tmp_path / "services.yaml"
    empty.write_text("services: {}\n")
    monkeypatch.setenv("SPARK_CONTROL_SERVICES_YAML", str(empty))
    port = free_port()
    overrides = tmp_path / "models.overrides.yaml"
    overrides.write_text(yaml.safe_dump({"models": {"m": {
        "repo": "org/model-m", "port": port, "weight_bytes": 2**30, "start_timeout_s": 60,
        "max_model_len": 4096, "gpu_memory_utilization": 0.3}}}))  # fmt: skip
    monkeypatch.setenv("MODELS_OVERRIDES", str(overrides))
    ssh_host.sim_config(start_delay_s=0.3, bind_host="127.0.0.1")
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path),
        health_poll_s=0.3, health_deep_s=0.5, health_timeout_s=5.0, health_leader_ttl_s=3.0,
        **SECRETS,
    )  # fmt: skip
    return settings, port


async def _endpoint(client: httpx.AsyncClient, name: str) -> dict[str, Any]:
    found = {e["name"]: e for e in (await client.get("/api/endpoints")).json()}
    return found[name]


async def _swap(client: httpx.AsyncClient, alias: str) -> None:
    r = await client.post("/api/swap", json={"model": "m", "host": alias})
    assert r.status_code == 202, r.text
    events = await stack.sse_events(client, r.json()["stream"])
    assert events[-1]["event"] == "done", events[-1]


async def test_probe_loop_endpoints_reports_and_metrics(setup: Any) -> None:
    settings, port = setup
    alias = settings.hosts[0].alias
    vllm = c.vllm_endpoint(alias)
    async with stack.executor(settings) as bus, health_loop(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            st = await stack.wait_for(lambda: bus.get_host_state(alias), timeout=20)
            assert st.up and st.probe is not None and st.probe.mem_total_bytes > 0
            probed = await health.read_events(bus, (c.evt_host(alias, "probed"),), 0)
            assert probed and probed[0][1].worker == "health-a"

            async def idle() -> bool:
                return (await _endpoint(client, vllm))["state"] == "idle"

            await stack.wait_for(idle, timeout=20)  # nothing loaded: idle, not a failure
            status = (await client.get("/api/status")).json()
            assert status["health_leader"]["worker"] == "health-a"
            assert any(e["name"] == vllm for e in status["endpoints"])

            await _swap(client, alias)

            async def served() -> dict[str, Any] | None:
                deep = (await client.get("/api/deep-health")).json()["services"][vllm]
                probe = deep["last_probe"]
                return deep if probe and probe["check"] == "completion" else None

            deep = await stack.wait_for(served, timeout=30)
            assert deep["last_probe"]["state"] == "ok"
            assert deep["auto_restart"]["restarts_in_window"] == 0
            ep = await stack.wait_for(lambda: _ready(client, vllm), timeout=20)
            assert ep["model"] == "m" and ep["base_url"] == f"http://127.0.0.1:{port}"

            # a client report is recorded, never flips the state
            report = {
                "service": "vllm",
                "ok": False,
                "source": "client-a",
                "error": "boom",
                "ms": 12,
            }
            r = await client.post("/api/health-event", json=report)
            assert r.status_code == 202 and r.json()["subject"] == f"service.{vllm}"
            assert (await client.post("/api/health-event", json={"service": "nope", "ok": False})
                    ).status_code == 404  # fmt: skip
            assert (await client.post("/api/health-event", json={"ok": True})).status_code == 400
            await asyncio.sleep(1.0)  # several polls later
            assert (await _endpoint(client, vllm))["state"] == "up"
            conn = (await client.get("/api/connectivity")).json()
            reports = conn["subjects"][f"service.{vllm}"]["reports"]
            assert reports == [{"ts": reports[0]["ts"], "ok": False, "source": "client-a",
                                "ms": 12, "error": "boom"}]  # fmt: skip
            assert any(d["failed_reports"] == 1 for d in conn["days"])

            # /metrics: valid text, the expected series, no secret, no client text in labels
            await client.post(
                "/v1/chat/completions", json={"model": "user-typed-NAME", "messages": []}
            )
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            fams = parse_prometheus(r.text)
            assert fams["spark_host_up"]["samples"] == [({"host": alias}, 1.0)]
            assert fams["spark_host_memory_total_bytes"]["samples"][0][1] > 0
            assert ({"host": alias, "model": "m"}, 1.0) in fams["spark_model_loaded"]["samples"]
            assert ({"endpoint": vllm, "state": "up"}, 1.0) in fams["spark_endpoint_state"][
                "samples"
            ]
            jobs = {(lb["action"], lb["state"]): v for lb, v in fams["spark_jobs"]["samples"]}
            assert jobs[("swap", "succeeded")] == 1
            assert fams["spark_proxy_requests_total"]["type"] == "counter"
            models = {lb["model"] for lb, _ in fams["spark_proxy_requests_total"]["samples"]}
            assert "other" in models and "user-typed-NAME" not in r.text
            assert "spark_signer_requests_total" in fams
            for secret in ("hf_SECRET_7f3a", "hook-SECRET-91", "tok-SECRET-55"):
                assert secret not in r.text


async def _ready(client: httpx.AsyncClient, name: str) -> dict[str, Any] | None:
    ep = await _endpoint(client, name)
    return ep if ep["ready"] else None


async def test_wedged_model_is_restarted_within_the_policy(setup: Any, ssh_host: Any) -> None:
    settings, _ = setup
    settings.health_restart_max = 2
    settings.health_restart_gap_s = 2.0
    settings.health_restart_grace_s = 1.0
    settings.health_deep_s = 0.3
    alias = settings.hosts[0].alias
    vllm = c.vllm_endpoint(alias)
    subject = c.evt_service(vllm, "restart")
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        # the restart into the wedge may wait for its start-up verdict: room for a slow machine
        async with httpx.AsyncClient(base_url=base, timeout=180) as client:
            await _swap(client, alias)
            ssh_host.sim_config(fail_mode="wedge", wedge_after_s=0.0)
            r = await client.post(f"/api/hosts/{alias}/restart")  # restart into the wedge
            await stack.sse_events(client, r.json()["events"])
            t0 = c.now()
            async with health_loop(settings):

                async def limited() -> list[c.Event] | None:
                    got = [e for _, e in await health.read_events(bus, (subject,), t0)]
                    return got if any("limit 2" in (e.message or "") for e in got) else None

                decisions = await stack.wait_for(limited, timeout=60, every=0.3)
                deep = (await client.get("/api/deep-health")).json()["services"][vllm]
    requested = [e for e in decisions if e.data["decision"] == "requested"]
    assert len(requested) == 2, [e.data for e in decisions]
    assert all(e.data["job_id"] for e in requested)
    assert requested[1].ts - requested[0].ts >= 2.0  # the gap
    assert requested[0].ts - t0 >= 1.0  # none within the grace after the loop started
    assert any("of its start" in (e.message or "") for e in decisions if e.ts < requested[0].ts)
    assert deep["state"] == "wedged" and deep["last_probe"]["state"] == "wedged"
    assert deep["auto_restart"]["restarts_in_window"] == 2
    assert deep["auto_restart"]["next_allowed_at"] is not None
    restarts = [cmd for cmd in ssh_host.commands("docker") if cmd["argv"][1:2] == ["restart"]]
    assert len(restarts) >= 3  # ours by hand, then the loop's two


async def test_short_outage_caught_with_duration_across_web_restarts(
    setup: Any, ssh_host: Any
) -> None:
    settings, _ = setup
    settings.health_poll_s = 5.0  # the outage is shorter than the poll interval
    settings.ssh_connect_timeout_s = 5.0
    alias = settings.hosts[0].alias
    async with health_loop(settings) as bus:
        await stack.wait_for(lambda: _up(bus, alias), timeout=20)
        ssh_host.stop()  # the kept connection drops: down at once
        await stack.wait_for(lambda: _down(bus, alias), timeout=5)
        await asyncio.sleep(0.5)
        ssh_host.start()
        st = await stack.wait_for(lambda: _up(bus, alias), timeout=4)  # before the next poll
        assert st.up
        async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
            first = (await client.get("/api/connectivity")).json()
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
        again = (await client.get("/api/connectivity?days=2")).json()
    for conn in (first, again):
        host = conn["subjects"][f"host.{alias}"]
        assert [t["to"] for t in host["transitions"]] == ["up", "down", "up"]
        outage = host["outages"][0]
        assert 0.4 < outage["duration_s"] < 5.0 and not outage["ongoing"]
        assert host["transitions"][-1]["down_s"] == outage["duration_s"]
        day = next(d for d in conn["days"] if d["subject"] == f"host.{alias}")
        assert day["outages"] == 1 and day["availability_pct"] < 100


async def test_service_endpoints_checked_and_streamed(setup: Any) -> None:
    settings, _ = setup
    settings.health_deep_s = 300.0  # only the first and the asked-for deep probes
    alias = settings.hosts[0].alias
    port = free_port()
    Path(os.environ["SPARK_CONTROL_SERVICES_YAML"]).write_text(yaml.safe_dump({"services": {
        "emb": {"kind": "embeddings", "host": alias, "image": "example.org/emb:1", "port": port,
                "start_timeout_s": 30},
        "off": {"kind": "tts", "host": alias, "image": "example.org/tts:1", "port": free_port(),
                "disabled": True},
    }}))  # fmt: skip
    async with stack.executor(settings), health_loop(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            r = await client.post("/api/services/emb/start")
            assert (await stack.sse_events(client, r.json()["events"]))[-1]["event"] == "done"
            ep = await stack.wait_for(lambda: _ready(client, "emb"), timeout=20)
            assert ep["base_url"] == f"http://127.0.0.1:{port}" and ep["kind"] == "embeddings"
            assert (await _endpoint(client, "off"))["state"] == "disabled"

            async def probed() -> dict[str, Any] | None:
                deep = (await client.get("/api/deep-health")).json()["services"]["emb"]
                return deep["last_probe"] if deep["last_probe"] else None

            probe = await stack.wait_for(probed, timeout=20)
            assert (probe["check"], probe["state"]) == ("embedding", "ok")

            # a failure report asks for a deep probe now (ours decides; the report flips nothing)
            bus = await connect(settings, name="reader")
            probed_subject = (c.evt_service("emb", "probed"),)
            before = len(await health.read_events(bus, probed_subject, 0))
            r = await client.post("/api/health-event", json={"service": "embeddings", "ok": False})
            assert r.json()["subject"] == "service.emb" and r.json()["deep_probe"] is True

            async def again() -> bool:
                return len(await health.read_events(bus, probed_subject, 0)) > before

            await stack.wait_for(again, timeout=10)
            await bus.close()
            assert (await _endpoint(client, "emb"))["state"] == "up"

            seen: list[str] = []

            async def listen() -> None:
                async with client.stream("GET", "/api/health/events") as resp:
                    async for line in resp.aiter_lines():
                        if line.startswith("event: "):
                            seen.append(line[7:])

            reader = asyncio.create_task(listen())
            await asyncio.sleep(0.5)
            r = await client.post("/api/services/emb/stop")
            assert (await stack.sse_events(client, r.json()["events"]))[-1]["event"] == "done"
            await stack.wait_for(lambda: "service.emb.down" in seen, timeout=20)
            reader.cancel()
            assert f"host.{alias}.probed" in seen
            assert (await _endpoint(client, "emb"))["state"] == "down"
            conn = (await client.get("/api/connectivity")).json()
            emb = conn["subjects"]["service.emb"]
            assert [t["to"] for t in emb["transitions"]][-2:] == ["up", "down"]
            assert emb["outages"][-1]["ongoing"] is True
            assert "service.off" not in conn["subjects"]  # disabled: no transitions


async def _up(bus: Bus, alias: str) -> c.HostState | None:
    st = await bus.get_host_state(alias)
    return st if st is not None and st.up else None


async def _down(bus: Bus, alias: str) -> c.HostState | None:
    st = await bus.get_host_state(alias)
    return st if st is not None and not st.up else None


async def test_one_leader_across_replicas(setup: Any) -> None:
    settings, _ = setup
    async with health_loop(settings, "health-a") as bus, health_loop(settings, "health-b"):
        await stack.wait_for(lambda: health.leader(bus), timeout=10)
        first = (await health.leader(bus) or {})["worker"]
        await asyncio.sleep(settings.health_leader_ttl_s)
        assert (await health.leader(bus) or {})["worker"] == first  # renewed, not flapping
    # the leader stepped down (released): the other takes over
    async with health_loop(settings, "health-c") as bus:
        got = await stack.wait_for(lambda: health.leader(bus), timeout=10)
        assert got["worker"] == "health-c"


# --- a tiny Prometheus text parser (exposition format 0.0.4) ---------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def parse_prometheus(text: str) -> dict[str, dict[str, Any]]:
    """Families with their TYPE and samples; any malformed line fails the test."""
    fams: dict[str, dict[str, Any]] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            fams.setdefault(line.split()[2], {"samples": []})
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            fams.setdefault(name, {"samples": []})["type"] = kind
        else:
            m = _SAMPLE.match(line)
            assert m, f"bad sample line: {line!r}"
            name, raw, value = m.groups()
            labels: dict[str, str] = {}
            pos = 0
            while raw and pos < len(raw):
                lm = _LABEL.match(raw, pos)
                assert lm, f"bad labels: {line!r}"
                labels[lm.group(1)] = lm.group(2)
                pos = lm.end()
            assert name in fams and "type" in fams[name], f"sample before its TYPE: {line!r}"
            fams[name]["samples"].append((labels, float(value)))
    return fams


async def test_health_worker_runs_under_the_shipped_executor_user(tmp_path: Path) -> None:
    """deploy/nats.conf: compose runs the health worker as ``executor``; its rights suffice."""
    from tests.integration.test_nats_permissions import ShippedNats

    server = ShippedNats(tmp_path / "nats").start()
    try:
        base = stack.make_settings(
            tmp_path / "data", server.url, [HostConfig(alias="local", transport="local")],
            health_poll_s=0.3, health_leader_ttl_s=3.0,
        )  # fmt: skip
        async with stack.web(server.settings_for("web", base)) as url:
            async with health_loop(server.settings_for("executor", base)) as bus:
                await stack.wait_for(lambda: _up(bus, "local"), timeout=20)
                async with httpx.AsyncClient(base_url=url) as client:

                    async def seen() -> dict[str, Any] | None:
                        got = (await client.get("/api/deep-health")).json()
                        return got if got["services"]["vllm-local"]["state"] == "idle" else None

                    got = await stack.wait_for(seen, timeout=20)
                    assert got["leader"]["worker"] == "health-a"
                    assert (await client.get("/metrics")).status_code == 200
    finally:
        server.stop()
