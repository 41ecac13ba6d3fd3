"""``spark-control up``: the whole stack on one box — embedded NATS (unless NATS_URL is set),
the web front and both workers as child processes. Ctrl-C stops everything; children die with
the supervisor (PR_SET_PDEATHSIG), so nothing is orphaned."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from app import embedded_nats
from app.config import Settings, ensure_data_dir
from app.procs import die_with_parent

log = logging.getLogger("spark-control")

PARTS = {
    "web": ["web"],
    "worker-ssh": ["worker", "ssh"],
    "worker-signer": ["worker", "signer"],
    "worker-health": ["worker", "health"],
}
CONFIG_EXIT = 2


def _spawn(part: str, config: str | None, env: dict[str, str]) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "app.cli"]
    if config:
        args += ["--config", config]
    # Own session: a terminal's Ctrl-C reaches only the supervisor, which stops the parts in
    # order (web and workers drain first, NATS last).
    return subprocess.Popen(
        args + PARTS[part], env=env, preexec_fn=die_with_parent, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen[bytes]], grace_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def up(settings: Settings, config: str | None) -> int:
    data = ensure_data_dir(settings)
    env = dict(os.environ)
    nats_proc = None
    if not settings.nats_url:
        nats_proc, url = embedded_nats.start(Path(data))
        env["NATS_URL"] = url
        log.info("embedded NATS with JetStream at %s (store %s)", url, data / "nats")
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    children = {part: _spawn(part, config, env) for part in PARTS}
    started = dict.fromkeys(PARTS, time.monotonic())
    failures = dict.fromkeys(PARTS, 0)
    restart_at: dict[str, float] = {}
    log.info("dashboard on http://%s:%d", settings.bind_host, settings.bind_port)
    code = 0
    try:
        while not stopping:
            time.sleep(0.2)
            if stopping:
                break
            if nats_proc is not None and nats_proc.poll() is not None:
                log.error("embedded nats-server exited (%s); stopping", nats_proc.returncode)
                code = 1
                break
            now = time.monotonic()
            for part, proc in list(children.items()):
                if part in restart_at:
                    if now >= restart_at[part]:
                        del restart_at[part]
                        children[part], started[part] = _spawn(part, config, env), now
                    continue
                rc = proc.poll()
                if rc is None:
                    continue
                if rc == CONFIG_EXIT:
                    log.error("%s refused its configuration; stopping everything", part)
                    stopping, code = True, CONFIG_EXIT
                    break
                # a part that ran a while restarts at once; a crash loop backs off
                failures[part] = 0 if now - started[part] > 60 else failures[part] + 1
                wait = min(30.0, 2.0 ** failures[part] - 1)
                log.warning("%s exited with %s; restarting in %.0f s", part, rc, wait)
                restart_at[part] = now + wait
    finally:
        _stop(list(children.values()))
        if nats_proc is not None:
            _stop([nats_proc])
    return code
