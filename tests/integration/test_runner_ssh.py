"""ShellRunner and SshTransport against a real OpenSSH sshd: exact results, strict host keys,
unreachable hosts, reconnects, and a probe that sees the simulated docker and GPU."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from app.config import HostConfig, Settings
from app.errors import AuthFailed, Cancelled, CommandTimeout, HostKeyRefused, HostUnreachable
from tests import stack
from tests.servers import _descendants, free_port, sleepers
from workers.probe import probe
from workers.runner import ShellRunner
from workers.transport import SshTransport


def _settings(sshd: Any, *, known_hosts: Path | None = None, **kw: Any) -> Settings:
    host = HostConfig(
        alias="spark1",
        address=sshd.host,
        port=sshd.port,
        user=sshd.user,
        key_path=str(sshd.client_key_path),
    )
    kw.setdefault("ssh_connect_timeout_s", 5.0)
    kw.setdefault("ssh_keepalive_s", 5.0)
    return Settings(hosts=[host], ssh_known_hosts=str(known_hosts or sshd.known_hosts_path), **kw)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Remote:
    """A runner on the sshd host plus what its transport reported as lost."""

    def __init__(self, settings: Settings) -> None:
        self.lost: list[str] = []
        self.transport = SshTransport(settings.hosts[0], settings, on_disconnect=self.lost.append)
        self.runner = ShellRunner(self.transport, kill_grace_s=0.5)

    async def close(self) -> None:
        await self.runner.close()
        await self.transport.close()


@pytest.fixture
async def remote(sshd_host: Any) -> AsyncIterator[Remote]:
    r = Remote(_settings(sshd_host))
    yield r
    await r.close()


async def test_exact_results_over_ssh(remote: Remote) -> None:
    run = remote.runner.run
    res = await run("echo out; printf 'err' >&2; exit 5", timeout=10)
    assert (res.stdout, res.stderr, res.exit_status) == ("out\n", "err", 5)
    assert (await run("printf 'no newline'", timeout=10)).stdout == "no newline"
    assert (await run("true", timeout=10)).stdout == ""
    assert (await run("echo 'héllo ✓'", timeout=10)).stdout == "héllo ✓\n"
    assert (await run("cat; readlink /proc/self/fd/0", timeout=10)).stdout == "/dev/null\n"
    assert (await run("exit 3", timeout=10)).exit_status == 3
    assert (await run("echo $SPARK_SIM_DIR", timeout=10)).stdout.strip().endswith("/sim")
    for i in range(50):
        assert (await run(f"echo {i}", timeout=10)).stdout == f"{i}\n"


async def test_streaming_over_ssh(remote: Remote) -> None:
    seen: list[tuple[str, str]] = []

    async def on_line(stream: str, line: str) -> None:
        seen.append((stream, line))

    res = await remote.runner.run(
        "for i in 1 2 3; do echo o$i; echo e$i >&2; done; printf tail", timeout=10, on_line=on_line
    )
    assert [x for s, x in seen if s == "stdout"] == ["o1", "o2", "o3", "tail"]
    assert [x for s, x in seen if s == "stderr"] == ["e1", "e2", "e3"]
    assert res.stderr == "e1\ne2\ne3\n"


async def test_timeout_kills_the_remote_process_group(remote: Remote, tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    with pytest.raises(CommandTimeout, match=r"after 0\.5s"):
        await remote.runner.run(f"sleep 30 & echo $! > {pidfile}; sleep 60", timeout=0.5)
    assert time.monotonic() - t0 < 5
    child = int(pidfile.read_text())
    for _ in range(100):
        if not _alive(child):
            break
        await asyncio.sleep(0.05)
    assert not _alive(child)
    assert (await remote.runner.run("echo ok", timeout=10)).stdout == "ok\n"


async def test_cancel_over_ssh(remote: Remote) -> None:
    started = asyncio.Event()

    async def on_line(stream: str, line: str) -> None:
        started.set()

    task = asyncio.create_task(remote.runner.run("echo go; sleep 60", timeout=30, on_line=on_line))
    await asyncio.wait_for(started.wait(), 10)
    assert await remote.runner.cancel()
    with pytest.raises(Cancelled):
        await task
    assert (await remote.runner.run("echo ok", timeout=10)).stdout == "ok\n"


async def test_unknown_host_key_is_refused(sshd_host: Any, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts.empty"
    empty.write_text("")
    r = Remote(_settings(sshd_host, known_hosts=empty))
    try:
        with pytest.raises(HostKeyRefused) as info:
            await r.runner.run("true", timeout=10)
    finally:
        await r.close()
    msg = info.value.message
    assert f"spark1 ({sshd_host.host}:{sshd_host.port})" in msg and str(empty) in msg
    assert f"ssh-keyscan -p {sshd_host.port} {sshd_host.host} >> {empty}" in msg
    assert isinstance(info.value.__cause__, asyncssh.HostKeyNotVerifiable)
    assert empty.read_text() == ""  # never auto-accepted


async def test_changed_host_key_is_refused(sshd_host: Any) -> None:
    wrong = sshd_host.write_wrong_known_hosts()
    r = Remote(_settings(sshd_host, known_hosts=wrong))
    try:
        with pytest.raises(HostKeyRefused, match="or has changed"):
            await r.runner.run("true", timeout=10)
    finally:
        await r.close()


async def test_missing_known_hosts_file_is_refused(sshd_host: Any, tmp_path: Path) -> None:
    r = Remote(_settings(sshd_host, known_hosts=tmp_path / "nope"))
    try:
        with pytest.raises(HostKeyRefused, match="does not exist"):
            await r.transport.exec("true", 5)
    finally:
        await r.close()


async def test_wrong_client_key_is_auth_failed(sshd_host: Any, tmp_path: Path) -> None:
    key = tmp_path / "other_key"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
    key.chmod(0o600)
    settings = _settings(sshd_host)
    settings.hosts[0].key_path = str(key)
    r = Remote(settings)
    try:
        with pytest.raises(AuthFailed):
            await r.runner.run("true", timeout=10)
    finally:
        await r.close()


async def test_unloadable_client_key_is_auth_failed(sshd_host: Any, tmp_path: Path) -> None:
    key = tmp_path / "garbage_key"
    key.write_text("not a key\n")
    settings = _settings(sshd_host)
    settings.hosts[0].key_path = str(key)
    r = Remote(settings)
    try:
        with pytest.raises(AuthFailed, match="cannot be loaded"):
            await r.runner.run("true", timeout=10)
    finally:
        await r.close()


async def test_closed_port_is_unreachable_within_the_connect_timeout(sshd_host: Any) -> None:
    settings = _settings(sshd_host, ssh_connect_timeout_s=1.0)
    settings.hosts[0].port = free_port()  # nobody listens there
    r = Remote(settings)
    t0 = time.monotonic()
    try:
        with pytest.raises(HostUnreachable) as info:
            await r.runner.run("true", timeout=10)
    finally:
        await r.close()
    assert time.monotonic() - t0 < 1.5
    assert info.value.message.startswith(f"spark1 (127.0.0.1:{settings.hosts[0].port}) unreachable")


async def test_one_connection_is_shared(remote: Remote) -> None:
    await remote.runner.run("true", timeout=10)
    conns = await asyncio.gather(*(remote.transport.connection() for _ in range(5)))
    assert len({id(c) for c in conns}) == 1
    rc, out, _ = await remote.transport.exec("echo side", 10)
    assert (rc, out) == (0, "side\n")
    assert (await remote.transport.connection()) is conns[0]
    await remote.transport.close()
    await asyncio.sleep(0.1)
    assert remote.lost == []  # closing on purpose is not a lost connection


async def test_reconnects_after_sshd_restart(sshd_host: Any, remote: Remote) -> None:
    assert (await remote.runner.run("echo before", timeout=10)).stdout == "before\n"
    await asyncio.to_thread(sshd_host.stop)  # drops every session: the connection is lost
    for _ in range(100):
        if remote.lost:
            break
        await asyncio.sleep(0.02)
    assert remote.lost, "on_disconnect was not called"
    # While it is down, a run fails with HostUnreachable (after retrying within the timeout).
    remote.transport.settings.ssh_connect_timeout_s = 0.5
    with pytest.raises(HostUnreachable):
        await remote.runner.run("true", timeout=10)
    # Back up shortly after the next run starts: the backoff loop finds it.
    remote.transport.settings.ssh_connect_timeout_s = 10.0
    threading.Timer(0.5, sshd_host.start).start()
    res = await remote.runner.run("echo after", timeout=10)
    assert res.stdout == "after\n"


async def test_keepalive_notices_a_frozen_host(sshd_host: Any) -> None:
    r = Remote(_settings(sshd_host, ssh_keepalive_s=0.2))
    await r.runner.run("true", timeout=10)
    sessions = _descendants(sshd_host.proc.pid)  # this connection's sshd session processes
    assert sessions
    for pid in sessions:
        os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(100):  # 3 missed keepalives at 0.2 s
            if r.lost:
                break
            await asyncio.sleep(0.05)
        assert r.lost and "keepalive" in r.lost[0].lower()
        assert not r.transport.connected
    finally:
        for pid in sessions:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        await r.close()


async def test_command_running_when_the_connection_drops(sshd_host: Any, remote: Remote) -> None:
    """The connection dies under a running command (its sshd session processes are killed; the
    command itself is left alone, as when a network drops): the run fails as unreachable, and
    the next command reconnects."""
    await remote.runner.run("true", timeout=10)
    task = asyncio.create_task(remote.runner.run("sleep 30", timeout=60))
    await stack.wait_for(lambda: sleepers("30"), timeout=10)  # the command runs
    for pid in _descendants(sshd_host.proc.pid):
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().startswith("sshd"):  # sshd(-session)
                os.kill(pid, signal.SIGKILL)
    with pytest.raises(HostUnreachable):
        await task
    assert (await remote.runner.run("echo again", timeout=10)).stdout == "again\n"
    for pid in sleepers("30"):  # what the dead session left behind
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_probe_over_ssh_sees_shims(sshd_host: Any, remote: Remote) -> None:
    sshd_host.add_container(name="vllm_node", image="nvcr.io/nvidia/vllm:25.09-py3")
    sshd_host.add_container(name="old", status="Exited (0) 2 hours ago")
    res = await probe(remote.runner, "spark1", timeout=20)
    assert res.host == "spark1" and res.mem_total_bytes > 0 and res.uptime_s > 0
    assert res.docker and [c.name for c in res.containers] == ["vllm_node"]
    assert res.containers[0].ports == "0.0.0.0:8888->8000/tcp"
    assert [g.name for g in res.gpus] == ["NVIDIA GB10"]
    assert res.gpus[0].memory_total_mib is None  # unified memory: [N/A]
    assert len(res.disks) >= 1 and all(d.total_bytes > 0 for d in res.disks)


async def test_an_sshd_that_accepts_then_hangs_is_unreachable_within_the_timeout(
    sshd_host: Any,
) -> None:
    """The kernel accepts the TCP connection but sshd (stopped) never sends its banner: the
    connect gives up at ssh_connect_timeout_s with a clear error instead of hanging."""
    settings = _settings(sshd_host, ssh_connect_timeout_s=1.0)
    os.kill(sshd_host.proc.pid, signal.SIGSTOP)
    r = Remote(settings)
    t0 = time.monotonic()
    try:
        with pytest.raises(HostUnreachable) as info:
            await r.runner.run("true", timeout=10)
        assert time.monotonic() - t0 < 2.5
        assert "unreachable" in info.value.message
    finally:
        os.kill(sshd_host.proc.pid, signal.SIGCONT)
        await r.close()
    again = Remote(settings)  # the host answers again: the next command just works
    try:
        assert (await again.runner.run("echo back", timeout=10)).stdout == "back\n"
    finally:
        await again.close()
