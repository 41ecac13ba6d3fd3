"""The services page (/services) and the swap-lock banner against real NATS and sshd with the
simulated docker host: the declared services listed (overrides on the test host, a disabled one,
one on an unconfigured host shown greyed), Start → the live job panel whose final event refreshes
the service's status cell out of band, refusals as the error fragment, the lock banner on /models
and /services and its Force release; then the same in chromium (tests/browser/services.mjs), with
screenshots in test-output/screenshots/."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import services
from app.config import Settings
from tests import browser_run, stack
from tests.servers import free_port

EXPECTED_SHOTS = ("services.png", "services-phone.png")
HX = {"HX-Request": "true", "Accept": "text/html"}


@pytest.fixture
def setup(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Settings:
    """``stt`` on the test host, ``tts`` there but disabled, ``far`` on an unconfigured host."""
    for name in (*services.BUNDLED_ENV, *services.OVERRIDES_ENV, *services.DISABLED_ENV):
        monkeypatch.delenv(name, raising=False)
    alias = f"gpu-{unique}"
    path = tmp_path / "services.overrides.yaml"
    path.write_text(yaml.safe_dump({"services": {
        "stt": {"kind": "stt", "host": alias, "image": "example.org/stt:1", "port": free_port(),
                "container": f"stt-{unique}", "start_timeout_s": 30},
        "tts": {"kind": "tts", "host": alias, "image": "example.org/tts:1", "port": free_port()},
        "far": {"host": "spark9", "image": "example.org/far:1", "port": free_port()},
    }}))  # fmt: skip
    monkeypatch.setenv("SERVICES_OVERRIDES", str(path))
    monkeypatch.setenv("DISABLED_SERVICES", "tts")
    ssh_host.sim_config(bind_host="127.0.0.1")
    host = stack.ssh_host_config(alias, ssh_host)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path)
    )


def _row(page: str, name: str) -> str:
    m = re.search(rf'<tr class="service-row[^"]*" id="service-row-{name}">(.*?)</tr>', page, re.S)
    assert m is not None, name
    return m.group(0)


async def _panel_job(client: httpx.AsyncClient, name: str, op: str) -> list[dict[str, Any]]:
    r = await client.post(f"/services/{name}/{op}", headers=HX)
    assert r.status_code == 200, r.text
    assert "<html" not in r.text and 'class="job-panel"' in r.text
    m = re.search(r'sse-connect="/jobs/([0-9a-f]+)/stream\?oob=1"', r.text)
    assert m is not None, r.text
    return await stack.sse_events(client, f"/jobs/{m.group(1)}/stream?oob=1")


def _kinds(events: list[dict[str, Any]]) -> list[str]:
    return re.findall(r"badge kind-(\w+)", " ".join(str(e["data"]) for e in events))


async def test_services_page_lists_and_starts(setup: Settings, unique: str) -> None:
    settings = setup
    alias = settings.aliases[0]
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            r = await client.get("/services", headers={"Accept": "text/html"})
            assert r.status_code == 200, r.text
            page = r.text
            assert '<a href="/services" aria-current="page">Services</a>' in page
            for name in ("parakeet", "kokoro", "bge-m3", "qdrant", "stt", "tts", "far"):
                assert f'id="service-row-{name}"' in page, name
            stt = _row(page, "stt")
            assert f"<td>{alias}</td>" in stt and f"<code>stt-{unique}</code>" in stt
            assert 'hx-post="/services/stt/start"' in stt and "disabled" not in stt
            assert 'hx-confirm="Stop stt on' in stt and 'hx-confirm="Restart stt on' in stt
            assert '<span class="muted">unknown</span>' in stt  # no status recorded yet
            tts = _row(page, "tts")
            assert '<span class="badge disabled">disabled</span>' in tts
            far = _row(page, "far")
            assert "unconfigured" in far and "host spark9 is not configured" in far
            assert 'id="lock-banner"' in page and ">free<" in page

            events = await _panel_job(client, "stt", "start")
            kinds = _kinds(events)
            assert kinds[0] == "accepted" and kinds[-1] == "done", kinds
            final = next(e["data"] for e in events if "kind-done" in str(e["data"]))
            cell = re.search(r'<div class="svc-status-body" id="svc-status-stt" '
                             r'hx-swap-oob="true">(.*?)</div>', final, re.S)  # fmt: skip
            assert cell is not None, final
            assert ">running<" in cell.group(1) and ">healthy<" in cell.group(1)
            assert "host-body-" not in final  # no host tile on the services page

            page = (await client.get("/services")).text
            assert ">running<" in _row(page, "stt")
            assert _kinds(await _panel_job(client, "stt", "status"))[-1] == "done"
            assert _kinds(await _panel_job(client, "stt", "stop"))[-1] == "done"  # leave it off
            jobs = (await client.get("/api/jobs")).json()
            assert {j["requested_by"] for j in jobs} == {"page"}

            for path, status, code in [
                ("/services/tts/start", 409, "SERVICE_DISABLED"),
                ("/services/far/start", 409, "HOST_NOT_CONFIGURED"),
                ("/services/nope/start", 404, "UNKNOWN_SERVICE"),
                ("/services/stt/explode", 404, "UNKNOWN_OP"),
            ]:
                r = await client.post(path, headers=HX)
                assert r.status_code == status, (path, r.text)
                assert '<p class="error" role="alert">' in r.text and code in r.text, path
                assert "<html" not in r.text


async def test_lock_banner_and_force_release(setup: Settings) -> None:
    settings = setup
    async with stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            body = {"holder": "batch <run>", "note": "nightly eval", "ttl_seconds": 600}
            r = await client.post("/api/swap/lock", json=body)
            assert r.status_code == 200, r.text
            for path in ("/models", "/services"):
                page = (await client.get(path)).text
                banner = re.search(r'<div class="lock-banner" id="lock-banner">(.*?)</div>',
                                   page, re.S)  # fmt: skip
                assert banner is not None, path
                text = banner.group(1)
                assert ">held<" in text and "batch &lt;run&gt;" in text, path
                assert "for 10 min more" in text and "nightly eval" in text, path
                assert 'hx-post="/lock/release"' in text and "Force release" in text, path
                confirm = "Release the lock held by batch &lt;run&gt;? Their swaps will no "
                assert confirm + "longer be protected." in text, path
                assert "<run>" not in page
            assert 'id="lock-token"' in (await client.get("/models")).text  # still on /models

            r = await client.post("/lock/release", headers=HX)
            assert r.status_code == 200, r.text
            assert r.text.lstrip().startswith('<div class="lock-banner" id="lock-banner">')
            assert ">free<" in r.text and "Force release" not in r.text and "<html" not in r.text
            assert (await client.get("/api/swap/lock")).json() == {"held": False}
            r = await client.post("/lock/release", headers=HX)  # idempotent
            assert r.status_code == 200 and ">free<" in html.unescape(r.text)


async def test_services_page_in_chromium(setup: Settings) -> None:
    node = browser_run.browser_tools()
    settings = setup
    browser_run.fresh_screenshots(*EXPECTED_SHOTS, "services-failure.png")
    async with stack.executor(settings), stack.web(settings) as base:
        summary, report = await browser_run.run_script(
            node, "services.mjs", base, "stt", str(browser_run.SCREENSHOTS)
        )
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:  # leave it stopped
            r = await client.post("/api/services/stt/stop")
            assert (await stack.sse_events(client, r.json()["events"]))[-1]["event"] == "done"
    assert summary["dialogs"] == [
        "Release the lock held by browser-test? Their swaps will no longer be protected."
    ], report
    browser_run.assert_screenshots(summary, EXPECTED_SHOTS, report)
