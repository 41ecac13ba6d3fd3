"""``vllm_flags``: the host's vLLM image is asked for its flags (through real NATS and sshd,
the simulated image answering ``vllm serve --help=all``); the pre-flight then accepts a flag
the repo's list lacks, for that host only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog
from tests import stack


@pytest.fixture
def settings(
    tmp_path: Path, nats_server: Any, sshd_host: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    overrides = tmp_path / "models.overrides.yaml"
    overrides.write_text(yaml.safe_dump({"models": {"new-flag": {
        "repo": "org/model-new", "port": 18123, "weight_bytes": 2**30,
        "extra_args": {"kv-cache-memory-bytes": "8G"},
    }}}))  # fmt: skip
    monkeypatch.setenv("MODELS_OVERRIDES", str(overrides))
    hosts = [stack.ssh_host_config(f"gpu-{unique}", sshd_host)]
    return stack.make_settings(
        tmp_path / "data", nats_server.url, hosts, known_hosts=str(sshd_host.known_hosts_path)
    )


async def _run(client: httpx.AsyncClient, alias: str, action: str, body: Any = None) -> Any:
    r = await client.post(f"/api/hosts/{alias}/{action}", json=body or {})
    assert r.status_code == 202, r.text
    return (await stack.sse_events(client, r.json()["events"]))[-1]


async def test_flags_refreshed_from_the_host_are_accepted_by_the_preflight(
    settings: Any, sshd_host: Any
) -> None:
    alias = settings.hosts[0].alias
    sshd_host.sim_config(vllm_extra_flags=["--kv-cache-memory-bytes"])
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=60) as client:
            assert (await _run(client, alias, "probe"))["event"] == "done"
            validate = "/api/swap/new-flag/validate"
            before = {
                ch["name"]: ch for ch in (await client.post(validate, json={})).json()["checks"]
            }
            assert not before["flags"]["ok"]
            assert "--kv-cache-memory-bytes" in before["flags"]["detail"]

            done = await _run(
                client, alias, "vllm_flags", {"args": {"image": "vllm/vllm-openai:v0.11.0"}}
            )
            assert done["event"] == "done", done
            result = done["data"]["data"]
            assert result["image"] == "vllm/vllm-openai:v0.11.0" and result["count"] > 50
            assert result["new"] == ["--kv-cache-memory-bytes"]

            after = {
                ch["name"]: ch for ch in (await client.post(validate, json={})).json()["checks"]
            }
            assert after["flags"]["ok"], after["flags"]

            bad = await _run(client, alias, "vllm_flags", {"args": {"image": "x; reboot"}})
            assert bad["event"] == "failed" and bad["data"]["code"] == "UNSAFE_VALUE"
    runs = [c["argv"] for c in sshd_host.commands("docker") if c["argv"][1:2] == ["run"]]
    assert runs == [["docker", "run", "--rm", "vllm/vllm-openai:v0.11.0", "vllm", "serve",
                     "--help=all"]]  # fmt: skip
