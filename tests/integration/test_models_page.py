"""The models page (/models) against real NATS and sshd with the simulated docker host: the
catalog listed (bundled + overrides), Check → the pre-flight fragment, Swap → the live job panel
whose final event refreshes the host's current-model line out of band, a held lock → 423 with the
error fragment; then the same in chromium (tests/browser/models.mjs), with screenshots in
test-output/screenshots/."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog
from tests import browser_run, stack
from tests.servers import free_port

EXPECTED_SHOTS = ("models.png", "models-phone.png")
HX = {"HX-Request": "true", "Accept": "text/html"}
CHECKS = ("command", "flags", "memory", "disk")


@pytest.fixture
def setup(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """Two small override models and two host aliases on the one simulated host (so the page
    shows its host selector)."""
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    models = {
        key: {
            "repo": f"org/model-{key}", "port": free_port(), "weight_bytes": 2**30,
            "start_timeout_s": 60, "max_model_len": 4096, "gpu_memory_utilization": 0.3,
        }
        for key in ("tiny-a", "tiny-b")
    }  # fmt: skip
    models["tiny-b"]["notes"] = "<script>alert(1)</script> & co"
    overrides = tmp_path / "models.overrides.yaml"
    overrides.write_text(yaml.safe_dump({"models": models}))
    monkeypatch.setenv("MODELS_OVERRIDES", str(overrides))
    ssh_host.sim_config(start_delay_s=0.5, bind_host="127.0.0.1")
    hosts = [
        stack.ssh_host_config(f"gpu-{unique}", ssh_host),
        stack.ssh_host_config(f"gpu-{unique}-b", ssh_host),
    ]
    return stack.make_settings(
        tmp_path / "data", nats_server.url, hosts, known_hosts=str(ssh_host.known_hosts_path)
    )


async def test_models_page_lists_catalog_and_checks(setup: Any) -> None:
    settings = setup
    alias, alias_b = settings.aliases
    bundled = catalog.load_catalog(catalog.bundled_path())
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            r = await client.get("/models", headers={"Accept": "text/html"})
            assert r.status_code == 200, r.text
            page = r.text
            assert '<a href="/models" aria-current="page">Models</a>' in page
            for key in (*bundled.models, "tiny-a", "tiny-b"):
                assert f'id="model-row-{key}"' in page, key
                assert f'hx-post="/models/{key}/validate"' in page, key
                assert f'hx-post="/models/{key}/swap"' in page, key
            assert page.count('class="badge source-overrides"') == 2
            assert page.count('class="badge source-bundled"') == len(bundled.models)
            assert "org/model-tiny-a" in page and "4,096" in page and "0.30" in page
            assert f'hx-confirm="Swap {alias} to tiny-a? The running model stops."' in page
            assert f'<option value="{alias_b}">' in page  # two hosts: a selector per row
            for a in (alias, alias_b):  # nothing swapped yet
                line = re.search(rf'<div class="model-line" id="model-{a}">(.*?)</div>', page, re.S)
                assert line is not None and "no model recorded" in line.group(1)
            assert 'id="lock-token"' in page and ">free<" in page
            assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page  # notes, escaped
            assert "<script>alert" not in page

            r = await client.post("/models/tiny-a/validate", data={"host": alias_b}, headers=HX)
            assert r.status_code == 200, r.text
            frag = r.text
            assert "<html" not in frag and 'class="preflight"' in frag
            for name in CHECKS:
                assert f'data-check="{name}"' in frag, name
            assert f"on {alias_b}" in frag
            assert "no probe of this host yet: probe it first" in frag  # memory: not probed
            assert "<details" in frag and "docker run -d --name vllm_node" in html.unescape(frag)

            r = await client.post("/models/nope/validate", data={"host": alias}, headers=HX)
            assert r.status_code == 404 and 'class="error"' in r.text and "UNKNOWN_MODEL" in r.text
            r = await client.post("/models/tiny-a/validate", data={"host": "nosuch"}, headers=HX)
            assert r.status_code == 404 and "UNKNOWN_HOST" in r.text and "<html" not in r.text


async def test_models_page_swap_lock_then_panel_refreshes_model_line(setup: Any) -> None:
    settings = setup
    alias = settings.aliases[0]
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            lock = (await client.post("/api/swap/lock", json={"holder": "batch"})).json()
            r = await client.post("/models/tiny-a/swap", data={"host": alias}, headers=HX)
            assert r.status_code == 423, r.text
            assert '<p class="error" role="alert">' in r.text and "LOCKED" in r.text
            assert "batch" in html.unescape(r.text) and "<html" not in r.text
            assert (await client.get("/api/jobs")).json() == []  # nothing queued

            r = await client.post(
                "/models/tiny-a/swap", data={"host": alias, "token": lock["token"]}, headers=HX
            )
            assert r.status_code == 200, r.text
            m = re.search(r'sse-connect="/jobs/([0-9a-f]+)/stream\?oob=1"', r.text)
            assert m is not None, r.text
            job_id = m.group(1)
            assert f"swap on {alias}" in r.text

            events = await stack.sse_events(client, f"/jobs/{job_id}/stream?oob=1")
            kinds = re.findall(r"badge kind-(\w+)", " ".join(str(e["data"]) for e in events))
            assert kinds[0] == "accepted" and kinds[-1] == "done", kinds
            assert "log" in kinds  # the container's log streamed before done
            final = next(e["data"] for e in events if "kind-done" in str(e["data"]))
            line = re.search(
                rf'<div class="model-line" id="model-{alias}" hx-swap-oob="true">(.*?)</div>',
                final,
                re.S,
            )
            assert line is not None, final
            assert '<code class="current">tiny-a</code>' in line.group(1)
            assert f'id="job-head-{job_id}" hx-swap-oob="true"' in final
            assert "host-body-" not in final  # no host tile on the models page
            state = await bus.get_model_state(alias)
            assert state is not None and state.model == "tiny-a"

            page = (await client.get("/models")).text
            assert '<code class="current">tiny-a</code>' in page


async def test_models_page_in_chromium_check_and_swap(setup: Any) -> None:
    node = browser_run.browser_tools()
    settings = setup
    alias = settings.aliases[1]  # the second host: the selector must be used
    browser_run.fresh_screenshots(*EXPECTED_SHOTS, "models-failure.png")
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:  # probe: checks pass
            job = (await client.post(f"/api/hosts/{alias}/probe")).json()
            assert (await stack.sse_events(client, job["events"]))[-1]["event"] == "done"
        summary, report = await browser_run.run_script(
            node, "models.mjs", base, alias, "tiny-a", str(browser_run.SCREENSHOTS)
        )
    assert summary["dialog"] == f"Swap {alias} to tiny-a? The running model stops.", report
    assert summary["job_id"], report
    browser_run.assert_screenshots(summary, EXPECTED_SHOTS, report)
