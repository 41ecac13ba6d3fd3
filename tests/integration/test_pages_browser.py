"""The HTMX pages in a real browser: /hosts → Probe → live SSE log to "done", /jobs, /jobs/<id>.

Drives Debian's chromium through playwright-core (tests/browser/pages.mjs) against the stack on
real NATS and sshd; screenshots land in test-output/screenshots/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests import browser_run, stack

EXPECTED_SHOTS = ("hosts.png", "jobs.png", "job.png", "hosts-phone.png")


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str) -> Any:
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path)
    )


async def test_pages_in_chromium_probe_streams_to_done(settings: Any, ssh_host: Any) -> None:
    node = browser_run.browser_tools()
    ssh_host.add_container(name="vllm_node", image="nvcr.io/nvidia/vllm:25.09-py3")
    alias = settings.hosts[0].alias
    browser_run.fresh_screenshots(*EXPECTED_SHOTS, "failure.png")
    async with stack.executor(settings), stack.web(settings) as base:
        summary, report = await browser_run.run_script(
            node, "pages.mjs", base, alias, str(browser_run.SCREENSHOTS)
        )
    assert summary["job_id"], report
    browser_run.assert_screenshots(summary, EXPECTED_SHOTS, report)
