"""On-demand swaps through the /v1 proxy with real parts: the official ``openai`` client → web
front → a real swap job on NATS → the executor → sshd → simulated docker starting stub vLLM
servers. Two models alternate under concurrent streaming clients: no request lost, none cut
off by an eviction, swaps batched; the queue bound answers 503 with Retry-After."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app import catalog
from tests import stack
from tests.servers import free_port
from tests.upstreams import write_catalog

REPLY = "alpha beta gamma delta epsilon"


@pytest.fixture
def setup(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> Any:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    models = {
        key: {
            "repo": f"org/model-{key}", "port": free_port(), "container": f"vllm_{key}",
            "weight_bytes": 2**30, "start_timeout_s": 60, "max_model_len": 4096,
            "gpu_memory_utilization": 0.3, "on_demand": True,
        }
        for key in ("a", "b")
    }  # fmt: skip
    models["a"]["aliases"] = ["model-a"]
    monkeypatch.setenv("MODELS_YAML", str(write_catalog(tmp_path / "models.yaml", models)))
    monkeypatch.setenv("MODELS_OVERRIDES", str(tmp_path / "models.overrides.yaml"))
    ssh_host.sim_config(start_delay_s=0.3, bind_host="127.0.0.1", token_delay_s=0.05,
                        reply=REPLY)  # fmt: skip
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)

    def settings(**kw: Any) -> Any:
        return stack.make_settings(
            tmp_path / "data", nats_server.url, [host],
            known_hosts=str(ssh_host.known_hosts_path), **kw,
        )  # fmt: skip

    return settings


async def chat(client: openai.AsyncOpenAI, model: str) -> tuple[str, str | None]:
    stream = await client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text, finish = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
    return text, finish


async def test_alternating_models_under_concurrent_clients(setup: Any) -> None:
    settings = setup(proxy_min_residency_s=0.5, proxy_max_wait_s=2.0, command_timeout_s=60.0)
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        await stack.wait_for(stack.front_ready(base), timeout=20)
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0,
                                    timeout=120)  # fmt: skip

        async def user(first: int, rounds: int) -> list[tuple[str, str, str | None]]:
            out = []
            for i in range(rounds):
                model = ["a", "model-a", "b"][(first + i) % 3]
                text, finish = await chat(client, model)
                out.append((model, text, finish))
            return out

        results = await asyncio.wait_for(
            asyncio.gather(*(user(i, 3) for i in range(6))), timeout=150
        )
        flat = [r for rs in results for r in rs]
        assert len(flat) == 18
        # every request served in full: nothing lost, no stream cut by an eviction
        assert all(text == REPLY and finish == "stop" for _, text, finish in flat), flat

        async with httpx.AsyncClient() as http:
            stats = (await http.get(f"{base}/api/proxy/stats")).json()["models"]
            listed = (await http.get(f"{base}/v1/models")).json()["data"]
        swaps = sum(m["swaps"] for m in stats.values())
        assert 2 <= swaps <= 8, stats  # batched: far fewer than one per request
        assert sum(m["errors"] for m in stats.values()) == 0
        jobs = [j for j in await bus.list_jobs() if j.action == "swap"]
        assert len(jobs) == swaps and all(j.requested_by == "proxy" for j in jobs)
        assert all(j.state == "succeeded" for j in jobs), [(j.state, j.error) for j in jobs]
        loaded = [m["id"] for m in listed if m["state"] == "loaded"]
        assert loaded and set(loaded) <= {"a", "model-a", "org/model-a", "b"}
        await client.close()


async def test_queue_bound_answers_503_with_retry_after(setup: Any, ssh_host: Any) -> None:
    ssh_host.sim_config(start_delay_s=2.0)
    settings = setup(proxy_queue_limit=1, command_timeout_s=60.0)
    async with stack.executor(settings), stack.web(settings) as base:
        await stack.wait_for(stack.front_ready(base), timeout=20)
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0,
                                    timeout=120)  # fmt: skip
        first = asyncio.create_task(chat(client, "a"))
        await asyncio.sleep(0.5)  # a waits for its swap
        async with httpx.AsyncClient(timeout=10) as http:
            r = await http.post(f"{base}/v1/chat/completions",
                                json={"model": "b", "messages": []})  # fmt: skip
        assert r.status_code == 503, r.text
        assert r.json()["code"] == "QUEUE_FULL" and int(r.headers["retry-after"]) >= 1
        assert await asyncio.wait_for(first, 60) == (REPLY, "stop")
        await client.close()


async def test_loading_notice_streams_comments_while_the_swap_runs(
    setup: Any, ssh_host: Any
) -> None:
    ssh_host.sim_config(start_delay_s=1.5)
    settings = setup(command_timeout_s=60.0, proxy_min_residency_s=0.5)
    async with stack.executor(settings), stack.web(settings) as base:
        await stack.wait_for(stack.front_ready(base), timeout=20)
        body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "stream": True}
        lines: list[tuple[float, str]] = []
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(timeout=60) as http:
            t0 = loop.time()
            async with http.stream("POST", f"{base}/v1/chat/completions", json=body,
                                   headers={"x-spark-loading-notice": "1"}) as r:  # fmt: skip
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    if line:
                        lines.append((loop.time() - t0, line))
        assert lines[0][1].startswith(": loading a") and lines[0][0] < 1.0
        data = [line for _, line in lines if line.startswith("data: ")]
        assert data[-1] == "data: [DONE]"
        assert lines[-1][0] > 1.5  # the answer came after the swap
        # the openai client skips the comments
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0,
                                    default_headers={"x-spark-loading-notice": "1"})  # fmt: skip
        assert await chat(client, "b") == (REPLY, "stop")
        await client.close()


async def test_a_client_that_leaves_the_queue_drops_its_claim(setup: Any) -> None:
    settings = setup(command_timeout_s=60.0, proxy_min_residency_s=2.0)
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        await stack.wait_for(stack.front_ready(base), timeout=20)
        client = openai.AsyncOpenAI(base_url=f"{base}/v1", api_key="none", max_retries=0,
                                    timeout=60)  # fmt: skip
        assert await chat(client, "a") == (REPLY, "stop")  # a loads, then stays >= 2 s
        leaving = asyncio.create_task(chat(client, "b"))  # queued behind a's residency
        await asyncio.sleep(0.5)
        leaving.cancel()  # the client goes away while it waits
        with pytest.raises(asyncio.CancelledError):
            await leaving
        await asyncio.sleep(3.0)  # past the residency: nobody wants b any more
        swaps = [j.args["model"] for j in await bus.list_jobs() if j.action == "swap"]
        assert swaps == ["a"]
        assert await chat(client, "a") == (REPLY, "stop")  # a still serves
        await client.close()
