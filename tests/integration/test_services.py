"""Auxiliary services end to end: HTTP → NATS → executor → real sshd → simulated docker, whose
non-vLLM containers are idle processes answering 200 on their published port.

start → running in ``docker ps`` and healthy; status; restart; stop → gone; unknown, disabled
and unconfigured-host refusals; ``nim_install`` with the NGC key on stdin only (never in an
argv, an event, the job record or a log); an injection payload in an override refused before
anything reaches the host, and again by the executor when sent straight on the bus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import subprocess
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import yaml

from app import contracts as c
from app import jobs, services
from app.bus import Bus
from app.config import Settings
from tests import stack
from tests.servers import free_port


@pytest.fixture
def overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in (*services.BUNDLED_ENV, *services.OVERRIDES_ENV, *services.DISABLED_ENV):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "services.overrides.yaml"
    monkeypatch.setenv("SERVICES_OVERRIDES", str(path))
    monkeypatch.setenv("DISABLED_SERVICES", "tts")
    return path


@pytest.fixture
def setup(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str, overrides: Path
) -> tuple[Settings, dict[str, int]]:
    alias = f"gpu-{unique}"
    ports = {"stt": free_port(), "tts": free_port(), "far": free_port()}
    overrides.write_text(yaml.safe_dump({"services": {
        "stt": {"kind": "stt", "host": alias, "image": "example.org/stt:1", "port": ports["stt"],
                "container": f"stt-{unique}", "gpus": True, "start_timeout_s": 30,
                "env": {"NOTE": f"$(touch /tmp/pwned-{unique}); 'q'"},
                "command": ["serve", "--port", str(ports["stt"])]},
        "tts": {"kind": "tts", "host": alias, "image": "example.org/tts:1", "port": ports["tts"]},
        "far": {"host": "spark9", "image": "example.org/far:1", "port": ports["far"]},
    }}))  # fmt: skip
    ssh_host.sim_config(bind_host="127.0.0.1")
    host = stack.ssh_host_config(alias, ssh_host)
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path)
    )
    return settings, ports


def docker_ps(host: Any) -> list[dict[str, Any]]:
    """``docker ps -a`` on the simulated host, as the shim answers it."""
    out = subprocess.run(
        [str(host.shims_dir / "docker"), "ps", "-a", "--format", "{{json .}}"],
        env={**os.environ, **host.env}, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def row(host: Any, name: str) -> dict[str, Any] | None:
    return next((r for r in docker_ps(host) if r["Names"] == name), None)


async def health(port: int) -> int | None:
    try:
        async with httpx.AsyncClient(timeout=3) as client:
            return (await client.get(f"http://127.0.0.1:{port}/health")).status_code
    except httpx.HTTPError:
        return None


async def op(client: httpx.AsyncClient, name: str, verb: str) -> list[dict[str, Any]]:
    r = await client.post(f"/api/services/{name}/{verb}")
    assert r.status_code == 202, r.text
    assert r.json()["events"] == f"/api/jobs/{r.json()['job_id']}/events"
    return await stack.sse_events(client, r.json()["events"])


def result(events: list[dict[str, Any]]) -> dict[str, Any]:
    final = events[-1]
    assert final["event"] == "done", final
    data: dict[str, Any] = final["data"]["data"]
    return data


async def test_start_status_restart_stop(setup: Any, ssh_host: Any, unique: str) -> None:
    settings, ports = setup
    container = f"stt-{unique}"
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            listed = {s["name"]: s for s in (await client.get("/api/services")).json()}
            assert {"parakeet", "kokoro", "bge-m3", "qdrant", "stt", "tts", "far"} <= set(listed)
            assert listed["stt"] == {
                "name": "stt", "kind": "stt", "host": settings.hosts[0].alias,
                "port": ports["stt"], "container": container, "container_port": ports["stt"],
                "image": "example.org/stt:1", "gpus": True, "health": "/health",
                "disabled": False, "configured_host": True,
                "base_url": f"http://127.0.0.1:{ports['stt']}", "source": "overrides",
                "status": None,
            }  # fmt: skip
            assert listed["tts"]["disabled"] is True
            assert listed["far"]["configured_host"] is False and listed["far"]["base_url"] is None
            assert listed["parakeet"]["configured_host"] is False  # spark2 is not configured
            assert listed["parakeet"]["port"] == 8000

            got = result(await op(client, "stt", "start"))
            assert got["healthy"] is True and got["running"] is True and got["state"] == "running"
            r = row(ssh_host, container)
            assert r is not None and r["State"] == "running" and r["Image"] == "example.org/stt:1"
            assert await health(ports["stt"]) == 200
            svc = services.load_services(services.bundled_path(), Path(os.environ[
                "SERVICES_OVERRIDES"])).services["stt"]  # fmt: skip
            runs = [cmd["argv"] for cmd in ssh_host.commands("docker") if cmd["argv"][1] == "run"]
            assert runs == [services.docker_run_argv("stt", svc)]  # received exactly as built
            assert runs[0][runs[0].index("-e") + 1] == f"NOTE=$(touch /tmp/pwned-{unique}); 'q'"

            got = result(await op(client, "stt", "status"))
            assert (got["state"], got["healthy"]) == ("running", True)
            assert got["health"]["url"] == f"http://127.0.0.1:{ports['stt']}/health"
            listed = {s["name"]: s for s in (await client.get("/api/services")).json()}
            assert listed["stt"]["status"]["op"] == "status"
            assert listed["stt"]["status"]["healthy"] is True

            got = result(await op(client, "stt", "restart"))
            assert got["recreated"] is False and got["healthy"] is True
            assert any(cmd["argv"][1:2] == ["restart"] for cmd in ssh_host.commands("docker"))

            got = result(await op(client, "stt", "stop"))
            assert got == {**got, "stopped": True, "state": "absent"}
            assert row(ssh_host, container) is None
            assert await health(ports["stt"]) is None

            got = result(await op(client, "stt", "status"))
            assert (got["state"], got["running"], got["healthy"]) == ("absent", False, False)
            got = result(await op(client, "stt", "restart"))  # gone: restart starts it again
            assert got["recreated"] is True and got["healthy"] is True
            got = result(await op(client, "stt", "stop"))
            assert row(ssh_host, container) is None
            got = result(await op(client, "stt", "stop"))
            assert got["stopped"] is False  # nothing to stop is not an error
    assert not list(Path("/tmp").glob(f"pwned-{unique}"))  # the $(…) in an env value never ran


async def test_refusals(setup: Any, ssh_host: Any) -> None:
    settings, _ports = setup
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for path, status, code in [
                ("/api/services/nope/start", 404, "UNKNOWN_SERVICE"),
                ("/api/services/tts/start", 409, "SERVICE_DISABLED"),
                ("/api/services/tts/restart", 409, "SERVICE_DISABLED"),
                ("/api/services/far/start", 409, "HOST_NOT_CONFIGURED"),
                ("/api/services/parakeet/status", 409, "HOST_NOT_CONFIGURED"),
                ("/api/services/stt/explode", 404, "UNKNOWN_OP"),
            ]:
                r = await client.post(path)
                assert (r.status_code, r.json()["code"]) == (status, code), (path, r.text)
            events = await op(client, "tts", "status")  # disabled: status still allowed
            assert result(events)["state"] == "absent"

            body = {"image": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3", "container": "nim",
                    "port": free_port()}  # fmt: skip
            r = await client.post("/api/nim/install", json=body)
            assert (r.status_code, r.json()["code"]) == (409, "NGC_KEY_MISSING")
            for bad in ({"container": "$(id)"}, {"image": "nvcr.io/x;id"}, {"port": 0},
                        {"volume": "/a/../etc"}, {"env": {"A": "x\ny"}}):  # fmt: skip
                r = await client.post("/api/nim/install", json={**body, **bad})
                assert (r.status_code, r.json()["code"]) == (400, "UNSAFE_VALUE"), (bad, r.text)
                assert "$(id)" not in r.text and ";id" not in r.text
            r = await client.post("/api/nim/install", json={**body, "ngc_key": "nvapi-leak"})
            assert (r.status_code, r.json()["code"]) == (400, "NGC_KEY_NOT_ACCEPTED")
            assert "nvapi-leak" not in r.text
            assert (await client.get("/api/jobs")).json()[0]["action"] == "service"
    assert not [cmd for cmd in ssh_host.commands("docker") if cmd["argv"][1] in ("run", "login")]


async def _final(bus: Bus, job_id: str) -> c.JobRecord:
    async def done() -> c.JobRecord | None:
        job = await jobs.get(bus, job_id)
        return job if job.state in c.FINAL_STATES else None

    found: c.JobRecord = await stack.wait_for(done, timeout=60)
    return found


async def test_nim_install_keeps_the_key_secret(
    setup: Any, ssh_host: Any, unique: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings, _ports = setup
    key = "nvapi-secret-" + secrets.token_hex(16)
    settings.ngc_key = key
    port = free_port()
    body = {"image": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3", "container": f"nim-{unique}",
            "port": port, "volume": "nim-cache", "env": {"NIM_MAX_MODEL_LEN": "8192"}}  # fmt: skip
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        every = await bus.js.subscribe(c.EVT_WILDCARD, ordered_consumer=True)
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            # The registry knows another key: the login step fails, nothing is started.
            other = hashlib.sha256(b"nvapi-someone-else").hexdigest()
            ssh_host.sim_config(registry_key_sha256=[other])
            r = await client.post("/api/nim/install", json=body)
            assert r.status_code == 202, r.text
            first = await stack.sse_events(client, r.json()["events"])
            failed = first[-1]
            assert failed["event"] == "failed", failed
            assert failed["data"]["code"] == "NGC_LOGIN_FAILED"
            assert row(ssh_host, f"nim-{unique}") is None
            logins = [cmd["argv"] for cmd in ssh_host.commands("docker")
                      if cmd["argv"][1] == "login"]  # fmt: skip
            assert logins == [["docker", "login", "nvcr.io", "--username", "$oauthtoken",
                               "--password-stdin"]]  # fmt: skip
            assert not (ssh_host.sim_dir / "logins.json").exists()

            # The registry knows this key (given on stdin, hashed by the simulator): logged in
            ssh_host.sim_config(registry_key_sha256=[hashlib.sha256(key.encode()).hexdigest()])
            r = await client.post("/api/nim/install", json=body)
            assert r.status_code == 202, r.text
            second = await stack.sse_events(client, r.json()["events"])
            got = result(second)
            assert got["running"] is True and got["container"] == f"nim-{unique}"
            assert got["logged_in"] is True
            assert any(e["data"].get("message") == "logged in to nvcr.io" for e in second)
            logins_file = json.loads((ssh_host.sim_dir / "logins.json").read_text())
            assert logins_file == {"nvcr.io": "$oauthtoken"}
            assert got["url"] == f"http://127.0.0.1:{port}"
            r = row(ssh_host, f"nim-{unique}")
            assert r is not None and r["State"] == "running"
            assert await health(port) == 200
            records = [(await client.get(f"/api/jobs/{e[0]['data']['job_id']}")).json()
                       for e in (first, second)]  # fmt: skip
            ps = (await client.get("/api/services")).text
        await _final(bus, records[1]["id"])
        raw: list[bytes] = []
        while True:
            try:
                raw.append((await every.next_msg(timeout=1.0)).data)
            except TimeoutError:
                break
        await every.unsubscribe()
    runs = [cmd["argv"] for cmd in ssh_host.commands("docker") if cmd["argv"][1] == "run"]
    assert len(runs) == 1
    assert runs[0][runs[0].index("-e") + 1] == "NGC_API_KEY"  # the name only, value from env
    assert runs[0][runs[0].index("-v") :][:2] == ["-v", "nim-cache:/opt/nim/.cache"]

    assert len(raw) >= len(first) + len(second)
    assert not [m for m in raw if key.encode() in m]
    assert key not in json.dumps([first, second, records]) + ps
    assert key not in json.dumps(msgspec.to_builtins(records))
    assert key not in (ssh_host.sim_dir / "commands.log").read_text()
    assert key not in caplog.text


async def test_injection_in_an_override_is_refused(
    setup: Any, ssh_host: Any, unique: str, overrides: Path
) -> None:
    settings, _ports = setup
    payload = f"x; touch /tmp/pwned-{unique}"
    entries = yaml.safe_load(overrides.read_text())["services"]
    entries["stt"]["image"] = payload
    overrides.write_text(yaml.safe_dump({"services": entries}))
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            for r in (await client.get("/api/services"),
                      await client.post("/api/services/stt/start")):  # fmt: skip
                assert (r.status_code, r.json()["code"]) == (500, "BAD_SERVICES"), r.text
                assert r.json()["error"].startswith(f"{overrides}: services.stt.image: must be")
                assert payload not in r.text
        # the executor validates again: a hostile definition sent straight on the bus is refused
        hostile = {"name": "stt", "op": "start", "service": {
            "image": "example.org/x:1", "port": free_port(), "host": settings.hosts[0].alias,
            "volumes": [f"/data:/d; touch /tmp/pwned-{unique}"]}}  # fmt: skip
        job, _ = await jobs.submit(bus, settings, settings.hosts[0].alias, "service", hostile)
        final = await _final(bus, job.id)
        assert (final.state, final.code) == ("failed", "UNSAFE_VALUE")
        assert final.error is not None and "services.stt.volumes[0]" in final.error
        assert "touch" not in final.error
    assert not [cmd for cmd in ssh_host.commands("docker") if cmd["argv"][1] == "run"]
    assert not list(Path("/tmp").glob(f"pwned-{unique}"))
