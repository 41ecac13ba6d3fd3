"""Stub OpenAI-compatible upstreams for the proxy's tests and benchmark: ``tests/sim/stub_vllm.py``
as a real process on a free port (chat, completions, embeddings, rerank, speech), plus the
files (catalog, services) and state that point the proxy at them."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from app import contracts as c
from app.bus import Bus
from tests.servers import free_port

REPO = Path(__file__).resolve().parent.parent
STUB = REPO / "tests" / "sim" / "stub_vllm.py"


class StubUpstream:
    """One stub server process; ``url`` is its base (no ``/v1``)."""

    def __init__(self, model: str, *args: str, served: list[str] | None = None):
        self.model = model
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(STUB), "--model", model, "--port", str(self.port)]
        argv += ["--delay", "0", "--disable-uvicorn-access-log", *args]
        if served:
            argv += ["--served-model-name", *served]
        self.argv = argv
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15.0) -> StubUpstream:
        self.proc = subprocess.Popen(
            self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/v1/models", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"stub upstream exited ({self.proc.returncode})")
            time.sleep(0.05)
        raise TimeoutError("stub upstream did not start")

    def running(self) -> int:
        """Requests the stub is working on now (its /metrics gauge)."""
        text = httpx.get(f"{self.url}/metrics", timeout=2).text
        for line in text.splitlines():
            if line.startswith("vllm:num_requests_running"):
                return int(float(line.rsplit(" ", 1)[1]))
        return 0

    def close(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_catalog(path: Path, models: dict[str, dict[str, Any]]) -> Path:
    """A catalog file (``MODELS_YAML``) of the given recipes."""
    path.write_text(yaml.safe_dump({"models": models}))
    return path


def write_services(path: Path, services: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"services": services}))
    return path


async def place(bus: Bus, host: str, key: str, port: int, **recipe: Any) -> None:
    """Record that ``host`` serves catalog ``key`` on ``port`` (as a swap would)."""
    state = c.ModelState(host=host, model=key, recipe=recipe, container=f"vllm_{key}",
                         port=port, since=c.now())  # fmt: skip
    await bus.put_model_state(state)
