"""``spark-control up`` on a fresh data dir: the whole stack, a probe of this machine, and a
Ctrl-C that leaves no process behind. Bad settings: a clear message, exit code 2, no loop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests import stack
from tests.servers import _descendants, free_port

CLI = [sys.executable, "-m", "app.cli"]


def _env(data: Path, port: int, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SPARK", "NATS_URL", "BIND_"))}
    env.update({"SPARK_DATA_DIR": str(data), "BIND_PORT": str(port)})
    env.update(extra)
    return env


def _status(base: str) -> Any:
    try:
        r = httpx.get(f"{base}/api/status", timeout=2)
    except httpx.HTTPError:
        return None
    if r.status_code != 200:
        return None
    status = r.json()
    names = sorted(w["name"] for w in status["workers"])
    return status if names == ["spark-blob-signer", "spark-health", "spark-ssh-executor"] else None


def _wait(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.1)
    raise TimeoutError("condition not met in time")


async def _probe_local(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        r = await client.post("/api/hosts/local/probe")
        assert r.status_code == 202
        events = await stack.sse_events(client, r.json()["events"])
        assert events[-1]["event"] == "done"
        assert events[-1]["data"]["data"]["mem_total_bytes"] > 0
        page = await client.get("/hosts")
        assert page.status_code == 200 and "local" in page.text


def test_up_runs_the_whole_stack_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*CLI, "up"],
        env=_env(tmp_path / "data", port),
        cwd=stack.REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        status = _wait(lambda: _status(base), timeout=60)
        assert status["bus"]["connected"] is True
        assert [h["alias"] for h in status["hosts"]] == ["local"]
        assert (tmp_path / "data" / "nats" / "jetstream").is_dir()  # embedded JetStream store
        children = _descendants(proc.pid)
        assert len(children) >= 4  # nats-server, web, two workers
        asyncio.run(_probe_local(base))
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        assert proc.wait(timeout=30) == 0
        _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_up_with_nats_url_uses_that_server(tmp_path: Path, nats_server: Any) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [*CLI, "up"],
        env=_env(tmp_path / "data", port, NATS_URL=nats_server.url),
        cwd=stack.REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _status(base), timeout=60)
        assert not (tmp_path / "data" / "nats").exists()  # no embedded server started
        assert (nats_server.store_dir / "jetstream").is_dir()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_bad_settings_exit_2_with_a_message_naming_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    cases = [
        (_env(tmp_path / "d", free_port(), BIND_PORT="nine"), "bind_port"),
        (_env(blocker / "sub", free_port()), "data_dir"),
        (_env(tmp_path / "d", free_port(), SPARK1_HOST="10.0.0.5"), "hosts.spark1.user"),
    ]
    for env, needle in cases:
        for part in (["up"], ["web"], ["worker", "ssh"]):
            done = subprocess.run(
                [*CLI, *part], env=env, cwd=stack.REPO, capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 2, (part, done.stderr)
            assert needle in done.stderr and "Traceback" not in done.stderr


def test_sigkill_of_up_leaves_no_orphans(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [*CLI, "up"], env=_env(tmp_path / "data", port), cwd=stack.REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        _wait(lambda: _status(f"http://127.0.0.1:{port}"), timeout=60)
        children = _descendants(proc.pid)
        assert len(children) >= 4
    finally:
        proc.kill()
        proc.wait()
    _wait(lambda: not any(Path(f"/proc/{pid}").exists() for pid in children), timeout=20)


def test_unreachable_nats_is_one_clear_line_and_exit_1(tmp_path: Path) -> None:
    closed = free_port()
    env = _env(
        tmp_path / "d", free_port(), NATS_URL=f"nats://user:s3cret@127.0.0.1:{closed}",
        SPARK_CONTROL_NATS_CONNECT_TIMEOUT_S="1.5",
    )  # fmt: skip
    for part in (["web"], ["worker", "ssh"], ["worker", "signer"]):
        t0 = time.monotonic()
        done = subprocess.run(
            [*CLI, *part], env=env, cwd=stack.REPO, capture_output=True, text=True, timeout=30
        )
        assert done.returncode == 1, (part, done.stderr)
        assert f"cannot reach NATS at nats://127.0.0.1:{closed}" in done.stderr
        assert "Traceback" not in done.stderr and "s3cret" not in done.stderr
        assert time.monotonic() - t0 < 10
