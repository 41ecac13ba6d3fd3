"""Running a tests/browser/*.mjs script (playwright-core on Debian's chromium) from a test: skip
rules, the subprocess with a time limit, its JSON summary and its screenshots checked."""

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
SCREENSHOTS = stack.REPO / "test-output" / "screenshots"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_TIMEOUT_S = 120


def browser_tools() -> str:
    """Path to node; skip when chromium, node or playwright-core is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} missing: install Debian package 'chromium'")
    node = shutil.which("node")
    if node is None:
        pytest.skip("node missing: install Node.js (20+) to run the browser test")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        pytest.skip("playwright-core missing: run `npm install --prefix tests/browser`")
    return node


def fresh_screenshots(*names: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    for name in names:
        (SCREENSHOTS / name).unlink(missing_ok=True)


async def run_script(node: str, script: str, *args: str) -> tuple[dict[str, Any], str]:
    """Run ``tests/browser/<script>``; return its summary and a report for assertion messages.
    Fails the test when it overruns or prints no JSON; asserts exit 0, ok, no console errors."""
    proc = await asyncio.create_subprocess_exec(
        node, str(BROWSER_DIR / script), *args, cwd=stack.REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), RUN_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"{script} did not finish within {RUN_TIMEOUT_S} s")
    report = f"exit {proc.returncode}\nstdout:\n{out.decode()}\nstderr:\n{err.decode()}"
    try:
        summary: dict[str, Any] = json.loads(out)
    except ValueError:
        pytest.fail(f"{script} printed no JSON summary\n{report}")
    assert proc.returncode == 0, report
    assert summary["ok"] is True, report
    assert summary["console_errors"] == [], report
    return summary, report


def assert_screenshots(summary: dict[str, Any], expected: tuple[str, ...], report: str) -> None:
    shots = {Path(p).name: Path(p) for p in summary["screenshots"]}
    assert sorted(shots) == sorted(expected), report
    for name, path in shots.items():
        data = path.read_bytes()
        assert len(data) > 1000 and data.startswith(PNG_MAGIC), f"{name}: not a non-empty PNG"
