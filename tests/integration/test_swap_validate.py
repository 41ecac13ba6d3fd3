"""POST /api/swap/{key}/validate through the real web front and a real probe of this machine:
the pre-flight's verdict per check, with numbers, and clear refusals for bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from app import catalog
from app.config import HostConfig
from tests import stack


@pytest.fixture
def settings(tmp_path: Path, nats_server: Any, unique: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MODELS_OVERRIDES", str(tmp_path / "models.overrides.yaml"))
    host = HostConfig(alias=f"loc-{unique}", address="localhost", transport="local")
    return stack.make_settings(tmp_path / "data", nats_server.url, [host])


async def test_validate_reports_each_check(settings: Any) -> None:
    alias = settings.hosts[0].alias
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            before = await client.post("/api/swap/llama-3.1-8b/validate", json={"host": alias})
            assert before.status_code == 200
            checks = {ch["name"]: ch for ch in before.json()["checks"]}
            assert checks["command"]["ok"] and checks["flags"]["ok"]
            assert checks["memory"] == {
                "name": "memory", "ok": False, "detail": "no probe of this host yet: probe it first"
            }  # fmt: skip
            assert before.json()["ok"] is False

            job = (await client.post(f"/api/hosts/{alias}/probe")).json()
            assert (await stack.sse_events(client, job["events"]))[-1]["event"] == "done"

            # a model far larger than this machine's memory is refused with the numbers
            r = await client.post(
                "/api/models",
                json={"key": "huge", "recipe": {"repo": "org/huge", "weight_bytes": 10**15}},
            )
            assert r.status_code == 201, r.text
            huge = (await client.post("/api/swap/huge/validate", json={"host": alias})).json()
            memory = next(ch for ch in huge["checks"] if ch["name"] == "memory")
            assert memory["ok"] is False and huge["ok"] is False
            assert "needs 931324.6 GiB" in memory["detail"] and "available" in memory["detail"]
            assert huge["command"].startswith("docker run -d --name vllm_node ")

            r = await client.post("/api/swap/nope/validate", json={"host": alias})
            assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_MODEL")
            r = await client.post("/api/swap/huge/validate", json={"host": "nosuch"})
            assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_HOST")
            r = await client.post("/api/swap/huge/validate", content=b"{oops")
            assert (r.status_code, r.json()["code"]) == (400, "BAD_JSON")
