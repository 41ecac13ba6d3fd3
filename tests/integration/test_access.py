"""Access through the real web front (uvicorn + real NATS): the cross-site guard with and
without Origin / Referer, API tokens and their scopes on representative routes, the dashboard's
sign-in, and the start-up refusal beyond loopback (a real ``spark-control`` process)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.access.tokens import ApiToken
from app.config import HostConfig, Settings
from tests import stack

OPS = "ops-token-0123456789abcdef"
READER = "reader-token-0123456789abc"
APP = "app-token-0123456789abcdefg"
SIGNER = "signer-token-0123456789abc"
SCRUB = {"task_id": "t", "items": [{"id": 1, "text": "mail ana@example.org"}], "ner": "rules_only"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def alias(unique: str) -> str:
    return f"gpu-{unique}"


@pytest.fixture
def open_settings(tmp_path: Path, nats_server: Any, alias: str) -> Settings:
    host = HostConfig(alias=alias, address="localhost", transport="local")
    return stack.make_settings(tmp_path / "data", nats_server.url, [host])


@pytest.fixture
def token_settings(tmp_path: Path, nats_server: Any, alias: str) -> Settings:
    host = HostConfig(alias=alias, address="localhost", transport="local")
    tokens = [
        ApiToken(name="ops", scopes=["control"], token=OPS),
        ApiToken(name="reader", scopes=["read"], token=READER),
        ApiToken(name="app", scopes=["inference"], token=APP),
    ]
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], api_tokens=tokens,
        signer_tokens={SIGNER: "ns-a"}, signer_timeout_s=2.0,
    )  # fmt: skip


# --- the cross-site guard ---------------------------------------------------------------------


async def test_cross_site_guard(open_settings: Settings, alias: str) -> None:
    async with stack.web(open_settings) as base, httpx.AsyncClient(base_url=base) as cl:
        probe = f"/api/hosts/{alias}/probe"
        foreign = {"Origin": "http://evil.example"}

        r = await cl.post(probe, headers=foreign)
        assert r.status_code == 403
        assert r.json() == {
            "error": "cross-site request refused: its Origin/Referer is not this host",
            "code": "CROSS_SITE",
        }
        r = await cl.post(probe, headers={"Referer": "http://evil.example/a.html"})
        assert (r.status_code, r.json()["code"]) == (403, "CROSS_SITE")
        r = await cl.post(probe, headers={"Origin": base.replace("127.0.0.1", "localhost")})
        assert r.status_code == 403, "another host name for the same address is another site"

        for same in ({"Origin": base}, {"Referer": f"{base}/hosts"}, {}):
            r = await cl.post(probe, headers=same)
            assert r.status_code == 202, (same, r.text)

        # a dashboard button (htmx): the refusal is a fragment in place
        r = await cl.post(
            f"/hosts/{alias}/probe",
            headers={**foreign, "HX-Request": "true", "Accept": "text/html"},
        )
        assert r.status_code == 403 and "CROSS_SITE" in r.text and '<p class="error"' in r.text
        r = await cl.post(f"/hosts/{alias}/probe", headers={"Origin": base, "HX-Request": "true"})
        assert r.status_code == 200, r.text

        # the lock, the schedule, models: other state-changing methods
        r = await cl.delete("/api/swap/lock", headers=foreign)
        assert r.status_code == 403
        r = await cl.post("/api/schedule", headers=foreign, json={"name": "x"})
        assert r.status_code == 403

        # reads pass whatever their Origin; machine endpoints are exempt
        assert (await cl.get("/api/hosts", headers=foreign)).status_code == 200
        r = await cl.post("/scrub", headers=foreign, json=SCRUB)
        assert r.status_code == 200, r.text
        r = await cl.post(
            "/api/health-event", headers=foreign, json={"service": "vllm", "ok": False}
        )
        assert r.status_code == 202, r.text
        r = await cl.post("/api/v1/blob/sign", headers=foreign, json={})
        assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED")  # its own bearer check


# --- tokens and scopes --------------------------------------------------------------------------


async def test_tokens_and_scopes(token_settings: Settings, alias: str) -> None:
    probe = f"/api/hosts/{alias}/probe"
    async with stack.web(token_settings) as base, httpx.AsyncClient(base_url=base) as cl:
        # open: static files and the liveness probe
        assert (await cl.get("/static/app.css")).status_code == 200
        assert (await cl.get("/healthz")).json() == {"ok": True}

        for path in ("/api/status", "/api/hosts", "/metrics"):
            r = await cl.get(path)
            assert (r.status_code, r.json()["code"]) == (401, "UNAUTHORIZED"), path
        r = await cl.get("/api/hosts", headers=bearer("not-a-known-token-at-all"))
        assert r.status_code == 401 and r.json() == {
            "error": "unknown token",
            "code": "UNAUTHORIZED",
        }
        r = await cl.get("/api/hosts", headers={"Authorization": f"Basic {READER}"})
        assert r.status_code == 401

        # read: GETs; control also reads; inference and sign do not
        assert (await cl.get("/api/status", headers=bearer(READER))).status_code == 200
        assert (await cl.get("/api/hosts", headers=bearer(OPS))).status_code == 200
        for token, name in ((APP, "app"), (SIGNER, "signer:ns-a")):
            r = await cl.get("/api/hosts", headers=bearer(token))
            assert r.status_code == 403
            assert r.json() == {
                "error": f"token {name!r} lacks the 'read' scope",
                "code": "FORBIDDEN_SCOPE",
            }

        # control: a host action
        assert (await cl.post(probe)).status_code == 401
        for token in (READER, APP):
            r = await cl.post(probe, headers=bearer(token))
            assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN_SCOPE")
        r = await cl.post(probe, headers=bearer(OPS))
        assert r.status_code == 202, r.text

        # inference: the redaction gateway
        assert (await cl.post("/scrub", json=SCRUB)).status_code == 401
        r = await cl.post("/scrub", json=SCRUB, headers=bearer(OPS))
        assert (r.status_code, r.json()["code"]) == (403, "FORBIDDEN_SCOPE")
        r = await cl.post("/scrub", json=SCRUB, headers=bearer(APP))
        assert r.status_code == 200, r.text

        # sign: the blob route checks its own signer_tokens (the token names the namespace)
        r = await cl.post("/api/v1/blob/sign", json={}, headers=bearer(OPS))
        assert r.json() == {"error": "unknown token", "code": "UNAUTHORIZED"}
        r = await cl.post(
            "/api/v1/blob/sign", headers=bearer(SIGNER),
            json={"rel_path": "projects/ns-a/x", "op": {"kind": "single_put"}},
        )  # fmt: skip
        assert (r.status_code, r.json()["code"]) == (503, "SIGNER_UNAVAILABLE"), r.text

        # no answer carries a token
        for token in (OPS, READER, APP, SIGNER):
            assert token not in r.text


async def test_dashboard_sign_in(token_settings: Settings, alias: str) -> None:
    html = {"Accept": "text/html"}
    async with stack.web(token_settings) as base, httpx.AsyncClient(base_url=base) as cl:
        same = {"Origin": base}
        # a page without a token: 401 with the sign-in form, pointing back at the page
        r = await cl.get("/jobs", headers=html)
        assert r.status_code == 401
        assert 'name="token"' in r.text and 'value="/jobs"' in r.text and "UNAUTHORIZED" in r.text
        # an htmx button without a token: a fragment with a sign-in link
        r = await cl.post(f"/hosts/{alias}/probe", headers={**html, "HX-Request": "true"})
        assert r.status_code == 401 and 'href="/login"' in r.text

        # wrong tokens: the form again, the token never echoed
        for wrong, message in (("nope-nope-nope-nope", "unknown token"),
                               (APP, "it needs the read scope")):  # fmt: skip
            r = await cl.post("/login", data={"token": wrong, "next": "/jobs"}, headers=same)
            assert r.status_code == 401 and message in r.text and wrong not in r.text
            assert "set-cookie" not in r.headers
        # a cross-site sign-in is refused
        r = await cl.post(
            "/login", data={"token": READER}, headers={"Origin": "http://evil.example"}
        )
        assert r.status_code == 403

        r = await cl.post("/login", data={"token": READER, "next": "/jobs"}, headers=same)
        assert r.status_code == 303 and r.headers["location"] == "/jobs"
        cookie = r.headers["set-cookie"]
        assert cookie.startswith("spark_token=") and "HttpOnly" in cookie
        assert "SameSite=lax" in cookie and "Path=/" in cookie
        r = await cl.get("/jobs", headers=html)
        assert r.status_code == 200 and "Sign out" in r.text

        # the reader's cookie may look, not act
        r = await cl.post(f"/hosts/{alias}/probe", headers={**same, "HX-Request": "true"})
        assert r.status_code == 403 and "FORBIDDEN_SCOPE" in r.text

        r = await cl.post("/login", data={"token": OPS, "next": "//evil.example/x"}, headers=same)
        assert r.status_code == 303 and r.headers["location"] == "/"
        r = await cl.post(f"/hosts/{alias}/probe", headers={**same, "HX-Request": "true"})
        assert r.status_code == 200, r.text

        r = await cl.post("/logout", headers=same)
        assert r.status_code == 303 and r.headers["location"] == "/login"
        assert (await cl.get("/jobs", headers=html)).status_code == 401


async def test_no_tokens_no_sign_in(open_settings: Settings) -> None:
    async with stack.web(open_settings) as base, httpx.AsyncClient(base_url=base) as cl:
        r = await cl.get("/login?next=/jobs")
        assert r.status_code in (301, 302, 303, 307) and r.headers["location"] == "/jobs"
        r = await cl.get("/jobs", headers={"Accept": "text/html"})
        assert r.status_code == 200 and "Sign out" not in r.text and "Open LAN" not in r.text


# --- start-up: secure by default ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _config(tmp_path: Path, nats_url: str, **values: Any) -> Path:
    path = tmp_path / "settings.yaml"
    path.write_text(yaml.safe_dump({"data_dir": str(tmp_path / "data"), "nats_url": nats_url,
                                    **values}))  # fmt: skip
    return path


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SPARK_", "BIND_", "NATS_"))}  # fmt: skip
    return {**env, **extra}


@pytest.mark.parametrize("part", ["web", "up"])
def test_beyond_loopback_without_tokens_refuses_to_start(tmp_path: Path, part: str) -> None:
    config = _config(tmp_path, "nats://127.0.0.1:1", bind_host="0.0.0.0", bind_port=_free_port())
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "--config", str(config), part],
        cwd=stack.REPO, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines == [
        "spark-control: bind_host: 0.0.0.0 is beyond loopback and no api_tokens are set; set "
        "SPARK_API_TOKENS (name:scopes:token) or, to serve everyone on the network without "
        "tokens, SPARK_ALLOW_OPEN_LAN=1"
    ]


async def test_open_lan_starts_with_a_banner_on_every_page(
    tmp_path: Path, nats_server: Any
) -> None:
    port = _free_port()
    config = _config(tmp_path, nats_server.url, bind_host="0.0.0.0", bind_port=port)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app.cli", "--config", str(config), "web",
        cwd=stack.REPO, env=_env(SPARK_ALLOW_OPEN_LAN="1"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as cl:
            for _ in range(600):  # until it listens (a fresh interpreter imports for a while)
                assert proc.returncode is None, f"spark-control web exited {proc.returncode}"
                try:
                    r = await cl.get("/healthz")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.05)
            assert r.status_code == 200
            for path in ("/", "/jobs", "/no-such-page"):
                r = await cl.get(path, headers={"Accept": "text/html"}, follow_redirects=True)
                assert "Open LAN" in r.text and "SPARK_ALLOW_OPEN_LAN" in r.text, path
            # no token is asked for: a control action runs
            assert (await cl.post("/api/hosts/local/probe")).status_code == 202
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
