"""The dashboard in a real browser against the stack (NATS, two web fronts, an executor, the
sshd host simulator): overview sparkline after probes, an outage seen live on /connectivity,
a download's progress on /transfers, a runtime setting saved on one front and applied on the
other, every page at phone width (tests/browser/dashboard.mjs). Plus the settings form over
plain HTTP: a bad value is a 400 error fragment and changes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app import contracts as c
from app import jobs
from app.bus import Bus
from tests import browser_run, stack

SHOTS = ("overview.png", "connectivity.png", "transfers.png", "settings.png", "overview-phone.png")
REPO = "sim-org/tiny-model"
HTML = {"accept": "text/html", "hx-request": "true"}


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, hf_host: Any, unique: str) -> Any:
    host = stack.ssh_host_config(f"gpu-{unique}", hf_host)
    hf_host.sim_config(download_bytes=6 * 2**20, download_seconds=4.0)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(hf_host.known_hosts_path)
    )


def _copy(settings: Any) -> Any:
    """A replica's own Settings object (runtime settings are applied per process)."""
    return msgspec.structs.replace(settings, hosts=list(settings.hosts))


async def _probe(bus: Bus, settings: Any) -> str:
    job, _ = await jobs.submit(bus, settings, settings.hosts[0].alias, "probe")
    final = None
    async for _, event in bus.job_events(job.id):
        final = event
    return final.kind if final else "none"


async def _host_up(bus: Bus, alias: str, up: bool) -> bool:
    st = await bus.get_host_state(alias)
    return st is not None and st.up is up


async def _outage(bus: Bus, settings: Any, host: Any) -> None:
    """sshd down (the executor's kept connection drops: a down event), a probe that fails,
    then sshd up and a probe that succeeds."""
    alias = settings.hosts[0].alias
    host.stop()
    await _probe(bus, settings)
    await stack.wait_for(lambda: _host_up(bus, alias, False), timeout=15)
    await asyncio.sleep(1.5)  # longer than the pages' coalescing (0.5 s): the tile shows it
    host.start()
    assert await _probe(bus, settings) == "done"
    await stack.wait_for(lambda: _host_up(bus, alias, True), timeout=15)


async def test_dashboard_in_chromium(settings: Any, hf_host: Any) -> None:
    node = browser_run.browser_tools()
    alias = settings.hosts[0].alias
    web1, web2 = _copy(settings), _copy(settings)
    browser_run.fresh_screenshots(*SHOTS, "dashboard-failure.png")
    async with stack.executor(settings) as bus:
        await _past_probes(bus, alias)
        async with stack.web(web1) as base, stack.web(web2) as base2:
            await _drive(bus, settings, hf_host, node, base, base2, alias)
    assert web1.health_poll_s == 9.0 and web2.health_poll_s == 9.0  # both replicas
    assert settings.health_poll_s == 15.0  # the executor's process has no follower here


async def _past_probes(bus: Bus, alias: str) -> None:
    """Twenty minutes ago, four probes 40 s apart (as the health loop publishes them): a web
    front started now replays them from SPARK_EVT into its charts."""
    now = c.now()
    for i in range(4):
        ts = now - 1200 + 40 * i
        data = {"host": alias, "mem_total_bytes": 100 * 2**30,
                "mem_available_bytes": (60 - 10 * i) * 2**30,
                "gpus": [{"name": "NVIDIA GB10", "utilization_pct": 20.0 * i}]}  # fmt: skip
        event = c.Event(kind="probed", ts=ts, host=alias, worker="test", data=data)
        await bus.publish_event(c.evt_host(alias, "probed"), event)


async def _drive(
    bus: Bus, settings: Any, hf_host: Any, node: str, base: str, base2: str, alias: str
) -> None:
    """Run dashboard.mjs, taking the host down and up when it asks; check its summary."""
    proc = await asyncio.create_subprocess_exec(
        node, str(browser_run.BROWSER_DIR / "dashboard.mjs"), base, base2, alias, REPO,
        str(browser_run.SCREENSHOTS), cwd=stack.REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    err: list[str] = []

    async def drive() -> None:
        assert proc.stderr is not None
        async for raw in proc.stderr:
            line = raw.decode(errors="replace")
            err.append(line)
            if line.strip() == "READY outage":
                await _outage(bus, settings, hf_host)

    try:
        out, _, _ = await asyncio.wait_for(
            asyncio.gather(proc.stdout.read(), drive(), proc.wait()), 240
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail("dashboard.mjs did not finish within 240 s\n" + "".join(err))
    report = f"exit {proc.returncode}\nstdout:\n{out.decode()}\nstderr:\n{''.join(err)}"
    summary = json.loads(out) if out.strip().startswith(b"{") else {}
    assert proc.returncode == 0 and summary.get("ok") is True, report
    assert summary["console_errors"] == [] and summary["http_errors"] == [], report
    browser_run.assert_screenshots(summary, SHOTS, report)
    entry = await bus.kv[c.SETTINGS_BUCKET].get(c.runtime_setting_key("health_poll_s"))
    assert json.loads(entry.value or b"{}")["value"] == 9.0


async def test_settings_form_validates_and_persists(settings: Any) -> None:
    web1, web2 = _copy(settings), _copy(settings)
    async with stack.web(web1) as base, stack.web(web2) as base2:
        async with httpx.AsyncClient(base_url=base, headers=HTML, timeout=20) as client:
            for name, value, code in (
                ("health_poll_s", "0", "BAD_SETTING"),
                ("health_poll_s", "nan", "BAD_SETTING"),
                ("health_restart_max", "2.5", "BAD_SETTING"),
                ("health_auto_restart", "maybe", "BAD_SETTING"),
                ("bind_port", "80", "UNKNOWN_SETTING"),
            ):
                r = await client.post(f"/settings/{name}", data={"value": value})
                assert r.status_code in (400, 404), (name, value, r.status_code)
                assert 'class="error"' in r.text and code in r.text, r.text
            assert web1.health_poll_s == 15.0
            r = await client.post("/settings/proxy_queue_limit", data={"value": "3"})
            assert r.status_code == 200 and "saved" in r.text
            await stack.wait_for(lambda: web2.proxy_queue_limit == 3, timeout=5)
            async with httpx.AsyncClient(base_url=base2, timeout=20) as other:
                page = (await other.get("/settings", headers={"accept": "text/html"})).text
                assert 'class="mono applied">3<' in page
            r = await client.post("/settings/proxy_queue_limit/reset")
            assert r.status_code == 200
            await stack.wait_for(lambda: web2.proxy_queue_limit == 64, timeout=5)


async def test_a_worker_applies_runtime_settings_live(settings: Any) -> None:
    """Every worker runs under ``run_until_stopped``, which follows ``runtime.>``: a value
    stored while it runs is applied to its settings object; a deleted one reverts."""
    from app import runtime_settings
    from workers.runtime import run_until_stopped

    worker = _copy(settings)
    stop = asyncio.Event()

    async def setup(bus: Bus, name: str) -> Any:
        async def teardown() -> None:
            return None

        return teardown

    task = asyncio.create_task(run_until_stopped(worker, "test", setup, stop))
    async with stack.web(_copy(settings)) as base:
        async with httpx.AsyncClient(base_url=base, headers=HTML, timeout=20) as client:
            r = await client.post("/settings/health_restart_max", data={"value": "7"})
            assert r.status_code == 200
            await stack.wait_for(lambda: worker.health_restart_max == 7, timeout=10)
            await client.post("/settings/health_restart_max/reset")
            await stack.wait_for(lambda: worker.health_restart_max == 3, timeout=10)
    stop.set()
    await asyncio.wait_for(task, 20)
    assert runtime_settings.SPECS["health_restart_max"].reader.startswith("health worker")
