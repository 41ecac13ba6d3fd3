"""The HTMX pages in a real browser: /hosts → Probe → live SSE log to "done", /jobs, /jobs/<id>.

Drives Debian's chromium through playwright-core (tests/browser/pages.mjs) against the stack on
real NATS and sshd; screenshots land in test-output/screenshots/.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests import stack

CHROMIUM = Path("/usr/bin/chromium")
BROWSER_DIR = stack.REPO / "tests" / "browser"
SCRIPT = BROWSER_DIR / "pages.mjs"
SCREENSHOTS = stack.REPO / "test-output" / "screenshots"
EXPECTED_SHOTS = ("hosts.png", "jobs.png", "job.png", "hosts-phone.png")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT_S = 120


def _browser_tools() -> str:
    """Path to node; skip when chromium, node or playwright-core is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: install Debian package 'chromium'")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node missing: install Node.js (20+) to run the browser test")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core missing: run `npm install --prefix tests/browser`")
    return node


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str) -> Any:
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)
    return stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path)
    )


async def test_pages_in_chromium_probe_streams_to_done(settings: Any, ssh_host: Any) -> None:
    node = _browser_tools()
    ssh_host.add_container(name="vllm_node", image="nvcr.io/nvidia/vllm:25.09-py3")
    alias = settings.hosts[0].alias
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in (*EXPECTED_SHOTS, "failure.png"):
        (SCREENSHOTS / name).unlink(missing_ok=True)

    async with stack.executor(settings), stack.web(settings) as base:
        proc = await asyncio.create_subprocess_exec(
            node, str(SCRIPT), base, alias, str(SCREENSHOTS),
            cwd=stack.REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            pytest.fail(f"pages.mjs did not finish within {RUN_TIMEOUT_S} s")

    report = f"exit {proc.returncode}\nstdout:\n{out.decode()}\nstderr:\n{err.decode()}"
    try:
        summary = json.loads(out)
    except ValueError:
        pytest.fail(f"pages.mjs printed no JSON summary\n{report}")
    assert proc.returncode == 0, report
    assert summary["ok"] is True, report
    assert summary["console_errors"] == [], report
    assert summary["job_id"], report
    shots = {Path(p).name: Path(p) for p in summary["screenshots"]}
    assert sorted(shots) == sorted(EXPECTED_SHOTS), report
    for name, path in shots.items():
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{name}: not a non-empty PNG"
