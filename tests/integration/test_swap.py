"""Swaps end to end: HTTP → NATS → executor → real sshd → simulated docker + stub vLLM, with
the container log streamed, the model state recorded, failure restoring the previous model,
the lock enforced, and every docker call received exactly as built."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app import catalog, webhooks
from app.launch import docker_argv
from tests import stack
from tests.servers import free_port


@pytest.fixture
def setup(
    tmp_path: Path, nats_server: Any, ssh_host: Any, unique: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[Any, dict[str, int]]:
    for name in (*catalog.BUNDLED_ENV, *catalog.OVERRIDES_ENV):
        monkeypatch.delenv(name, raising=False)
    ports = {"a": free_port(), "b": free_port(), "c": free_port()}
    models = {
        key: {
            "repo": f"org/model-{key}", "port": port, "weight_bytes": 2**30,
            "start_timeout_s": 60, "max_model_len": 4096, "gpu_memory_utilization": 0.3,
        }
        for key, port in ports.items()
    }  # fmt: skip
    models["c"]["env"] = {"VLLM_LOGGING_PREFIX": f"$(touch /tmp/pwned-{unique}); 'q'"}
    overrides = tmp_path / "models.overrides.yaml"
    overrides.write_text(yaml.safe_dump({"models": models}))
    monkeypatch.setenv("MODELS_OVERRIDES", str(overrides))
    ssh_host.sim_config(start_delay_s=0.5, bind_host="127.0.0.1")
    host = stack.ssh_host_config(f"gpu-{unique}", ssh_host)
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [host], known_hosts=str(ssh_host.known_hosts_path),
        webhook_secret=HOOK_SECRET,
    )  # fmt: skip
    return settings, ports


HOOK_SECRET = "hook-secret-4f1c"


class Receiver:
    """A webhook receiver on a kernel-chosen port: every POST body and its signature."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, Any], bool]] = []
        self.arrived = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        headers = dict(line.split(": ", 1) for line in head.split("\r\n")[1:] if ": " in line)
        lower = {k.lower(): v for k, v in headers.items()}
        body = await reader.readexactly(int(lower["content-length"]))
        ok = webhooks.verify(body, HOOK_SECRET, lower.get("x-spark-signature"))
        self.got.append((json.loads(body), ok))
        self.arrived.set()
        writer.write(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    async def wait(self, n: int) -> None:
        await stack.wait_for(lambda: len(self.got) >= n, timeout=20)


async def _swap(client: httpx.AsyncClient, model: str, alias: str, **kw: Any) -> list[dict]:
    r = await client.post("/api/swap", json={"model": model, "host": alias}, **kw)
    assert r.status_code == 202, r.text
    assert r.json()["stream"] == f"/api/swap/{r.json()['job_id']}/stream"
    return await stack.sse_events(client, r.json()["stream"])


async def _chat(port: int, model: str) -> str:
    async with httpx.AsyncClient(timeout=10) as client:
        r = await client.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}]},
        )
    r.raise_for_status()
    return str(r.json()["choices"][0]["message"]["content"])


async def test_swap_a_to_b_then_failure_restores_b(setup: Any, ssh_host: Any, unique: str) -> None:
    settings, ports = setup
    alias = settings.hosts[0].alias
    receiver = Receiver()
    server = await asyncio.start_server(receiver.handle, "127.0.0.1", 0)
    settings.webhook_urls = [f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"]
    async with server, stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            events = await _swap(client, "a", alias)
            kinds = [e["event"] for e in events]
            assert kinds[0] == "accepted" and kinds[-1] == "done", events[-1]
            logs = [e["data"]["line"] for e in events if e["event"] == "log"]
            assert any("Application startup complete." in line for line in logs)
            assert await _chat(ports["a"], "a")
            state = await bus.get_model_state(alias)
            assert state is not None and (state.model, state.port) == ("a", ports["a"])

            events = await _swap(client, "b", alias)
            assert events[-1]["event"] == "done", events[-1]
            assert events[-1]["data"]["data"]["previous"] == "a"
            assert await _chat(ports["b"], "b")
            with pytest.raises(httpx.HTTPError):
                await _chat(ports["a"], "a")  # A was stopped

            ssh_host.sim_config(fail_mode="crash", fail_models=["org/model-c"])
            events = await _swap(client, "c", alias)
            final = events[-1]
            assert final["event"] == "failed" and final["data"]["code"] == "SWAP_FAILED"
            assert "exited while starting" in final["data"]["message"]
            assert "previous model b restored" in final["data"]["message"]
            assert await _chat(ports["b"], "b")
            state = await bus.get_model_state(alias)
            assert state is not None and state.model == "b"

            job = (await client.get(f"/api/swap/{final['data']['job_id']}")).json()
            assert job["state"] == "failed" and job["action"] == "swap"

            # status and restart of what runs now (b, restored)
            model = (await client.get(f"/api/hosts/{alias}/model")).json()
            assert (model["model"], model["port"]) == ("b", ports["b"])
            r = await client.post(f"/api/hosts/{alias}/restart")
            assert r.status_code == 202
            events = await stack.sse_events(client, r.json()["events"])
            assert events[-1]["event"] == "done" and events[-1]["data"]["data"]["model"] == "b"
            assert await _chat(ports["b"], "b")

            await receiver.wait(3)  # signed, one per swap, in order
            assert [(e["event"], e["model"], ok) for e, ok in receiver.got] == [
                ("swap_complete", "a", True), ("swap_complete", "b", True),
                ("swap_failed", "c", True),
            ]  # fmt: skip
            assert receiver.got[2][0]["code"] == "SWAP_FAILED"
            assert HOOK_SECRET not in json.dumps([e for e, _ in receiver.got])

    # every docker run reached the host exactly as built: no value was re-parsed by a shell
    runs = [cmd["argv"] for cmd in ssh_host.commands("docker") if cmd["argv"][1:2] == ["run"]]
    overrides = yaml.safe_load(Path(os.environ["MODELS_OVERRIDES"]).read_text())["models"]
    for key in ("a", "b", "c"):
        recipe = catalog.validate_recipe(key, overrides[key])
        built = docker_argv(key, recipe)
        home_word = next(w for w in built if w.startswith("$HOME/"))
        expected = [w if w != home_word else w.replace("$HOME", str(Path.home())) for w in built]
        assert expected in runs, (key, runs)
    assert not list(Path("/tmp").glob(f"pwned-{unique}"))  # the $(…) in an env value never ran


async def test_lock_held_means_423_without_the_token(setup: Any) -> None:
    settings, _ports = setup
    alias = settings.hosts[0].alias
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            lock = (await client.post("/api/swap/lock", json={"holder": "batch"})).json()
            r = await client.post("/api/swap", json={"model": "a", "host": alias})
            assert (r.status_code, r.json()["code"]) == (423, "LOCKED")
            assert (await client.get("/api/jobs")).json() == []  # nothing queued
            events = await _swap(client, "a", alias, headers={"X-Lock-Token": lock["token"]})
            assert events[-1]["event"] == "done"
            r = await client.post("/api/swap", json={"model": "nope", "host": alias})
            assert r.status_code == 423  # the lock is checked first
            await client.request(
                "DELETE", "/api/swap/lock", headers={"X-Lock-Token": lock["token"]}
            )
            r = await client.post("/api/swap", json={"model": "nope", "host": alias})
            assert (r.status_code, r.json()["code"]) == (404, "UNKNOWN_MODEL")
            r = await client.post("/api/swap", json={"host": alias})
            assert (r.status_code, r.json()["code"]) == (400, "BAD_JSON")

            # the generic host route honours the lock too for what changes the served model
            lock = (await client.post("/api/swap/lock", json={"holder": "batch"})).json()
            r = await client.post(f"/api/hosts/{alias}/stop")
            assert (r.status_code, r.json()["code"]) == (423, "LOCKED")
            r = await client.post(
                f"/api/hosts/{alias}/stop", headers={"X-Lock-Token": lock["token"]}
            )
            assert r.status_code == 202
            assert (await stack.sse_events(client, r.json()["events"]))[-1]["event"] == "done"
            r = await client.post(f"/api/hosts/{alias}/probe")  # reading needs no token
            assert r.status_code == 202
            assert (await client.get(f"/api/hosts/{alias}/model")).json()["model"] is None
            r = await client.post(f"/api/hosts/{alias}/restart")
            assert r.status_code == 423  # restart changes the served model too: lock honoured
            r = await client.post(
                f"/api/hosts/{alias}/restart", headers={"X-Lock-Token": lock["token"]}
            )  # nothing runs: refused by the executor
            events = await stack.sse_events(client, r.json()["events"])
            assert events[-1]["event"] == "failed" and events[-1]["data"]["code"] == "NO_MODEL"


async def test_two_swaps_at_once_run_one_after_the_other(setup: Any) -> None:
    settings, ports = setup
    alias = settings.hosts[0].alias
    async with stack.executor(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            first, second = await asyncio.gather(
                client.post("/api/swap", json={"model": "a", "host": alias}),
                client.post("/api/swap", json={"model": "b", "host": alias}),
            )
            assert first.status_code == second.status_code == 202  # queued, not refused
            ev1 = await stack.sse_events(client, first.json()["stream"])
            ev2 = await stack.sse_events(client, second.json()["stream"])
            assert ev1[-1]["event"] == ev2[-1]["event"] == "done"
            started = sorted(
                (float(e["data"]["ts"]), e["data"]["job_id"])
                for e in [*ev1, *ev2] if e["event"] in ("started", "done")
            )  # fmt: skip
            # per-host order: one swap finished before the other started
            assert [j for _, j in started][:2] == [started[0][1]] * 2
            assert await _chat(
                ports["b"] if started[-1][1] == second.json()["job_id"] else ports["a"],
                "b" if started[-1][1] == second.json()["job_id"] else "a",
            )


async def test_hosts_page_buttons_only_read(setup: Any) -> None:
    settings, _ports = setup
    alias = settings.hosts[0].alias
    async with stack.web(settings) as base, httpx.AsyncClient(base_url=base) as client:
        for action in ("stop", "swap", "restart"):
            r = await client.post(f"/hosts/{alias}/{action}", headers={"HX-Request": "true"})
            assert r.status_code == 400 and "NOT_A_PAGE_ACTION" in r.text
        assert (await client.get("/api/jobs")).json() == []


async def test_cluster_recipe_launches_through_the_head_nodes_script(
    setup: Any, ssh_host: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, _ports = setup
    alias, port = settings.hosts[0].alias, free_port()
    overrides = Path(os.environ["MODELS_OVERRIDES"])
    models = yaml.safe_load(overrides.read_text())["models"]
    models["tp"] = {
        "repo": "org/model-tp", "mode": "cluster", "tensor_parallel_size": 2, "port": port,
        "weight_bytes": 2**30, "start_timeout_s": 60, "max_model_len": 4096,
        "gpu_memory_utilization": 0.3, "image": "nvcr.io/nvidia/vllm:25.10-py3",
        "container": "tp_node", "env": {"NCCL_DEBUG": "WARN", "VLLM_LOGGING_LEVEL": "INFO"},
    }  # fmt: skip
    overrides.write_text(yaml.safe_dump({"models": models}))
    settings.cluster_script = str(ssh_host.shims_dir / "launch-cluster.sh")
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            events = await _swap(client, "tp", alias)
            assert events[-1]["event"] == "done", events[-1]
            assert await _chat(port, "tp")
            calls = len(ssh_host.commands("docker"))
            r = await client.post(f"/api/hosts/{alias}/stop")
            assert (await stack.sse_events(client, r.json()["events"]))[-1]["event"] == "done"
            state = await bus.get_model_state(alias)
            assert state is not None and state.model is None
    stops = [cmd["argv"] for cmd in ssh_host.commands("docker")[calls:]]
    assert ["docker", "stop", "tp_node"] in stops  # through the script's `stop`
    (run,) = [cmd["argv"] for cmd in ssh_host.commands("docker") if "org/model-tp" in cmd["argv"]]
    assert run[:3] == ["docker", "run", "-d"] and "--network" in run
    assert run[run.index("--name") + 1] == "tp_node"
    assert "nvcr.io/nvidia/vllm:25.10-py3" in run  # the recipe's image, not the script's
    envs = {run[i + 1] for i, word in enumerate(run) if word == "-e"}
    assert {"NCCL_DEBUG=WARN", "VLLM_LOGGING_LEVEL=INFO"} <= envs
    serve = run[run.index("vllm") :]
    assert serve[:3] == ["vllm", "serve", "org/model-tp"]
    assert serve[serve.index("--tensor-parallel-size") + 1] == "2"
    assert serve.count("--distributed-executor-backend") == 1


async def test_a_failed_swap_that_does_not_restore_records_that_nothing_serves(
    setup: Any, ssh_host: Any
) -> None:
    settings, ports = setup
    alias = settings.hosts[0].alias
    overrides = Path(os.environ["MODELS_OVERRIDES"])
    models = yaml.safe_load(overrides.read_text())["models"]
    models["c"]["restore_previous_on_failure"] = False
    overrides.write_text(yaml.safe_dump({"models": models}))
    async with stack.executor(settings) as bus, stack.web(settings) as base:
        async with httpx.AsyncClient(base_url=base, timeout=90) as client:
            assert (await _swap(client, "a", alias))[-1]["event"] == "done"
            ssh_host.sim_config(fail_mode="crash", fail_models=["org/model-c"])
            final = (await _swap(client, "c", alias))[-1]
            assert final["event"] == "failed" and "restored" not in final["data"]["message"]
            state = await bus.get_model_state(alias)
            assert state is not None and state.model is None  # a was stopped, c never served
            model = (await client.get(f"/api/hosts/{alias}/model")).json()
            assert model["model"] is None
            with pytest.raises(httpx.HTTPError):
                await _chat(ports["a"], "a")
