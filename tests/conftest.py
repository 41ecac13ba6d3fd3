"""Shared fixtures: real NATS, SSH hosts and S3 on free ports; CI=true turns skips into failures."""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `from tests import ...` / `from app import ...` under bare pytest
    sys.path.insert(0, str(REPO))

from tests.servers import (  # noqa: E402
    SSHD,
    AsyncsshHost,
    HfAsyncsshHost,
    HfSshdHost,
    NatsServer,
    SeaweedS3,
    SshdHost,
)


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """nats-server + JetStream on a free port: ``.url``, ``.port``, ``.store_dir``, ``restart()``"""
    server = NatsServer(tmp_path / "nats").start()
    yield server
    server.close()


@pytest.fixture
def ssh_host(tmp_path: Path) -> Iterator[SshdHost | AsyncsshHost]:
    """A stand-in GPU host: real OpenSSH sshd if installed, else the in-process asyncssh server."""
    cls = SshdHost if SSHD.exists() else AsyncsshHost
    host = cls(tmp_path / "ssh").start()
    yield host
    host.close()


@pytest.fixture
def hf_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An ssh_host whose Hugging Face cache is the simulator's (small, quick downloads)."""
    for name in ("HF_HUB_CACHE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)  # the asyncssh stand-in passes os.environ on
    cls = HfSshdHost if SSHD.exists() else HfAsyncsshHost
    host = cls(tmp_path / "ssh").start()
    host.sim_config(download_bytes=4 * 2**20, download_seconds=0.5)
    yield host
    host.close()


@pytest.fixture
def sshd_host(tmp_path: Path) -> Iterator[SshdHost]:
    """A real OpenSSH sshd host (skipped when sshd is missing)."""
    if not SSHD.exists():
        pytest.skip(f"{SSHD} missing: install the Debian package openssh-server")
    host = SshdHost(tmp_path / "sshd").start()
    yield host
    host.close()


@pytest.fixture
def asyncssh_host(tmp_path: Path) -> Iterator[AsyncsshHost]:
    """The in-process asyncssh stand-in host (always available)."""
    host = AsyncsshHost(tmp_path / "asyncssh").start()
    yield host
    host.close()


@pytest.fixture(scope="module")
def s3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    """SeaweedFS S3 checking signatures: ``.endpoint_url``, ``.access_key``, ``.secret_key``."""
    store = SeaweedS3(tmp_path_factory.mktemp("seaweed")).start()
    yield store
    store.close()


@pytest.fixture
def unique() -> str:
    """A short unique lowercase token, e.g. ``t3f9a2``, for aliases, buckets and names."""
    return "t" + secrets.token_hex(3)


# --- CI guard: with CI=true a skipped test means something the suite needs is missing. ---

_SKIPS: list[str] = []


def _record_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        _SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _record_skip(report)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    _record_skip(report)


def _ci() -> bool:
    return os.environ.get("CI") == "true"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _ci() and _SKIPS and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _ci() and _SKIPS:
        terminalreporter.section("CI=true: skipped tests fail the run", sep="=", red=True)
        for line in _SKIPS:
            terminalreporter.write_line(f"SKIPPED {line}")
