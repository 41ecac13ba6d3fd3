"""The simulated GPU host (tests/shims + tests/sim) driven through a real SSH server: docker
run → stub vLLM answering after the start-up delay → stop / rm, failure modes, hf download, and
the command log that proves which argv reached the host."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncssh
import httpx
import pytest

from tests.servers import SHIMS_DIR, free_port
from workers.probe import parse_docker_ps

IMAGE = "nvcr.io/nvidia/vllm:25.09-py3"
REPLY = "Hello from the spark-control simulator."
MIB = 1024 * 1024


def launch(port: int, name: str = "vllm_node", model: str = "org/Model-8B", *extra: str) -> str:
    """A recipe-like single-box launch, as REFERENCE.md §1 gives it."""
    return (
        f"docker run -d --name {name} --gpus all --ipc=host -p {port}:8000 "
        "-v $HOME/.cache/huggingface:/root/.cache/huggingface -e HF_TOKEN "
        f"{IMAGE} vllm serve {model} --served-model-name m8 --max-model-len 8192 "
        "--gpu-memory-utilization 0.82 " + " ".join(extra)
    ).strip()


@pytest.fixture
def host(ssh_host: Any) -> Iterator[Any]:
    """The SSH test host; afterwards, nothing it started may still run."""
    yield ssh_host
    ssh_host.close()
    deadline = time.monotonic() + 10
    while ssh_host.sim_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = ssh_host.sim_processes()
    ssh_host.kill_sim_processes()
    assert not left, f"simulator processes outlived the host: {left}"


@pytest.fixture
async def conn(host: Any) -> AsyncIterator[asyncssh.SSHClientConnection]:
    async with asyncssh.connect(**host.connect_kwargs()) as c:
        yield c


async def sh(conn: asyncssh.SSHClientConnection, cmd: str, rc: int | None = 0) -> Any:
    r = await conn.run(cmd)
    if rc is not None:
        assert r.exit_status == rc, (cmd, r.exit_status, r.stdout, r.stderr)
    return r


async def until(check: Callable[[], Awaitable[Any]], timeout: float = 15) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        if value := await check():
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def status(conn: asyncssh.SSHClientConnection, name: str = "vllm_node") -> str:
    r = await sh(
        conn, f"docker inspect --format '{{{{.State.Status}}}} {{{{.State.ExitCode}}}}' {name}"
    )
    return str(r.stdout.strip())


async def wait_health(port: int, code: int = 200, timeout: float = 15) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=2) as http:

        async def check() -> bool:
            try:
                return (await http.get("/health")).status_code == code
            except httpx.TransportError:
                return False

        await until(check, timeout)


async def refused(port: int) -> bool:
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    w.close()
    return False


def ps_rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


# --- the happy path ----------------------------------------------------------------------------


async def test_launch_serves_after_the_delay_then_stop_and_rm(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=1.0)
    port = free_port()
    t0 = time.monotonic()
    cid = (await sh(conn, launch(port))).stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)

    ps = (await sh(conn, "docker ps --format '{{json .}}'")).stdout
    [c] = parse_docker_ps(ps)  # what the probe sees
    assert (c.id, c.name, c.image) == (cid[:12], "vllm_node", IMAGE)
    assert c.status.startswith("Up ") and c.ports == f"0.0.0.0:{port}->8000/tcp"
    assert ps_rows(ps)[0]["State"] == "running"
    assert await refused(port), "answering before the engine is up"

    await wait_health(port)
    assert time.monotonic() - t0 >= 0.9
    log = host.container_log("vllm_node")
    lines = log.splitlines()
    done = lines.index("(APIServer pid=1) INFO:     Application startup complete.")
    assert all(' - "GET /health HTTP/1.1" 200 OK' in line for line in lines[done + 1 :])
    head = "\n".join(lines[:done])
    for text in ("vLLM API server version", "Loading weights took", "Starting vLLM API server"):
        assert text in head
    assert (await sh(conn, "docker logs vllm_node")).stdout.startswith(log[:200])
    tail = (await sh(conn, "docker logs --tail 1 vllm_node")).stdout
    assert tail.count("\n") == 1

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
        models = (await http.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["m8"]
        assert models["data"][0]["root"] == "org/Model-8B"
        body = {"model": "m8", "messages": [{"role": "user", "content": "say hi"}]}
        chat = (await http.post("/v1/chat/completions", json=body)).json()
        assert chat["object"] == "chat.completion"
        assert chat["choices"][0]["message"] == {
            "role": "assistant",
            "content": REPLY,
            "tool_calls": [],
        }
        assert chat["usage"] == {"prompt_tokens": 2, "completion_tokens": 5, "total_tokens": 7}
        body2 = {"model": "m8", "prompt": "x", "max_tokens": 2}
        short = (await http.post("/v1/completions", json=body2)).json()["choices"][0]
        assert (short["text"], short["finish_reason"]) == ("Hello from", "length")
        wrong = await http.post("/v1/chat/completions", json={**body, "model": "other"})
        assert wrong.status_code == 404 and "does not exist" in wrong.json()["message"]

    assert (await sh(conn, "docker stop vllm_node")).stdout == "vllm_node\n"
    assert await refused(port)
    assert (await sh(conn, "docker ps --format '{{json .}}'")).stdout == ""
    [row] = ps_rows((await sh(conn, "docker ps -a --format '{{json .}}'")).stdout)
    assert row["Status"].startswith("Exited (0) ") and row["Ports"] == ""
    assert await status(conn) == "exited 0"
    state = json.loads((await sh(conn, "docker inspect -f '{{json .State}}' vllm_node")).stdout)
    assert state["Running"] is False and state["FinishedAt"] > state["StartedAt"]
    assert "Finished server process" in host.container_log("vllm_node")

    assert (await sh(conn, "docker rm vllm_node")).stdout == "vllm_node\n"
    assert (await sh(conn, "docker ps -a --format '{{json .}}'")).stdout == ""
    gone = await sh(conn, "docker rm vllm_node", rc=1)
    assert gone.stderr == "Error response from daemon: No such container: vllm_node\n"


async def test_streaming_chat_and_completions(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.2, reply="one two three four", token_delay_s=0.05)
    port = free_port()
    await sh(conn, launch(port))
    await wait_health(port)

    async def events(path: str, body: dict[str, Any]) -> tuple[list[Any], list[float]]:
        out, times = [], []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as http:
            async with http.stream("POST", path, json={**body, "stream": True}) as r:
                assert r.headers["content-type"].startswith("text/event-stream")
                async for line in r.aiter_lines():
                    if line:
                        assert line.startswith("data: ")
                        out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
                        times.append(time.monotonic())
        return out, times

    chat, times = await events(
        "/v1/chat/completions",
        {
            "model": "m8",
            "messages": [{"role": "user", "content": "hi"}],
            "stream_options": {"include_usage": True},
        },
    )
    assert chat[-1] == "[DONE]" and chat[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in chat[:-2])
    assert text == "one two three four"
    assert chat[-3]["choices"][0]["finish_reason"] == "stop"
    assert chat[-2]["usage"]["completion_tokens"] == 4 and chat[-2]["choices"] == []
    assert times[-1] - times[0] >= 0.15  # chunks are streamed, not buffered

    comp, _ = await events("/v1/completions", {"model": "m8", "prompt": "hi", "max_tokens": 3})
    assert comp[-1] == "[DONE]"
    assert "".join(e["choices"][0]["text"] for e in comp[:-1]) == "one two three"
    assert comp[-2]["choices"][0]["finish_reason"] == "length"


async def test_host_network_listens_on_vllm_port(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.2)
    port = free_port()
    cmd = (
        f"docker run -d --name vllm_node --network host --ipc=host --privileged {IMAGE} "
        f"vllm serve org/Model-8B --port {port} -tp 1"
    )
    await sh(conn, cmd)
    await wait_health(port)
    [c] = parse_docker_ps((await sh(conn, "docker ps --format '{{json .}}'")).stdout)
    assert c.ports == "" and c.status.startswith("Up")
    async with httpx.AsyncClient(timeout=5) as http:
        models = (await http.get(f"http://127.0.0.1:{port}/v1/models")).json()
    assert models["data"][0]["id"] == "org/Model-8B"  # no --served-model-name: the model
    assert f"http://0.0.0.0:{port}" in host.container_log("vllm_node")


# --- failure injection -------------------------------------------------------------------------


async def test_crash_on_start_exits_1(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.4, fail_mode="crash")
    port = free_port()
    await sh(conn, launch(port))
    assert await until(lambda: _is(status(conn), "exited 1"))
    [row] = ps_rows((await sh(conn, "docker ps -a --format '{{json .}}'")).stdout)
    assert row["Status"].startswith("Exited (1) ")
    assert (await sh(conn, "docker ps -q")).stdout == ""
    log = host.container_log("vllm_node")
    assert "Engine core initialization failed" in log and "startup complete" not in log
    assert await refused(port)

    # attached (no -d): the log streams to the client, which exits with the container's code
    await sh(conn, "docker rm vllm_node")
    attached = await sh(conn, launch(port).replace(" -d ", " --rm "), rc=1)
    assert "Starting to load model org/Model-8B" in attached.stdout
    assert attached.stdout.rstrip().endswith("See root cause above. Failed core proc(s): {}")
    assert (await sh(conn, "docker ps -aq")).stdout == ""  # --rm


async def test_wedge_answers_500_until_restarted(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.2, fail_mode="wedge", fail_starts=1)
    port = free_port()
    await sh(conn, launch(port))
    await wait_health(port, code=500)
    log = host.container_log("vllm_node")
    assert log.index("Application startup complete.") < log.index("CUBLAS_STATUS_EXECUTION_FAILED")
    assert "EngineDeadError" in log
    async with httpx.AsyncClient(timeout=5) as http:
        r = await http.post(
            f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "m8", "messages": []}
        )
        assert r.status_code == 500
    assert (await status(conn)) == "running 0"  # wedged, not dead: only a probe tells

    assert (await sh(conn, "docker restart vllm_node")).stdout == "vllm_node\n"
    await wait_health(port)  # fail_starts=1: the second start is healthy
    assert host.container_log("vllm_node").count("Application startup complete.") == 2


async def test_hang_never_gets_ready(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.2, fail_mode="hang")
    port = free_port()
    await sh(conn, launch(port))
    await asyncio.sleep(1.0)
    assert await refused(port)
    assert await status(conn) == "running 0"
    log = host.container_log("vllm_node")
    assert "Starting to load model" in log and "startup complete" not in log
    await sh(conn, "docker stop -t 5 vllm_node")
    assert await status(conn) == "exited 0"


async def test_fail_models_and_memory_total(host: Any, conn: Any) -> None:
    host.sim_config(
        start_delay_s=0.1,
        fail_mode="crash",
        fail_models=["org/Bad-8B"],
        mem_total_bytes=32 * 1024**3,
    )
    good, bad, big = free_port(), free_port(), free_port()
    await sh(conn, launch(good, "good"))
    await sh(conn, launch(bad, "bad", "org/Bad-8B"))
    await sh(conn, launch(big, "big", "org/Big-70B"))  # 140 GB of bf16 weights in 32 GiB
    await wait_health(good)
    assert await until(lambda: _is(status(conn, "bad"), "exited 1"))
    assert await until(lambda: _is(status(conn, "big"), "exited 1"))
    assert "No available memory for the cache blocks" in host.container_log("big")
    kv = 32 * 0.82 - 16e9 / 1024**3 - 1.5  # total x utilisation - 8B bf16 weights - overhead
    assert f"Available KV cache memory: {kv:.2f} GiB" in host.container_log("good")


async def test_restart_policy_brings_a_crashed_container_back(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.1, fail_mode="crash", fail_starts=1)
    port = free_port()
    await sh(conn, launch(port).replace(" -d ", " -d --restart unless-stopped "))
    await wait_health(port)
    out = (
        await sh(
            conn,
            "docker inspect -f '{{.RestartCount}} {{.HostConfig.RestartPolicy.Name}}' vllm_node",
        )
    ).stdout
    assert out == "1 unless-stopped\n"
    await sh(conn, "docker stop vllm_node")  # a stopped container is not restarted
    await asyncio.sleep(0.4)
    assert await status(conn) == "exited 0"


# --- other verbs -------------------------------------------------------------------------------


async def test_logs_follow_until_the_container_stops(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.3)
    await sh(conn, launch(free_port()))
    proc = await conn.create_process("docker logs -f vllm_node")
    seen = ""
    while "Application startup complete." not in seen:
        seen += await asyncio.wait_for(proc.stdout.readline(), 10)
    await sh(conn, "docker stop vllm_node")
    rest = await asyncio.wait_for(proc.stdout.read(), 10)
    await asyncio.wait_for(proc.wait(), 10)
    assert proc.exit_status == 0 and rest.rstrip().endswith("Finished server process [1]")


async def test_errors_conflicts_exec_and_rm(host: Any, conn: Any) -> None:
    for verb in ("stop", "restart", "logs", "rm -f", "start", "kill"):
        r = await sh(conn, f"docker {verb} nope", rc=1)
        assert r.stderr == "Error response from daemon: No such container: nope\n", verb
    assert (await sh(conn, "docker inspect nope", rc=1)).stderr == "Error: No such object: nope\n"
    assert (await sh(conn, "docker frobnicate", rc=1)).stderr.startswith(
        "docker: 'frobnicate' is not a docker command."
    )
    assert "unknown flag: --bogus" in (await sh(conn, "docker run --bogus x", rc=125)).stderr

    host.sim_config(start_delay_s=0.1)
    port = free_port()
    await sh(conn, launch(port).replace(" -d ", " -d --rm "))
    again = await sh(conn, launch(free_port()), rc=125)
    assert 'The container name "/vllm_node" is already in use' in again.stderr
    taken = await sh(conn, launch(port, "other"), rc=125)
    assert f"Bind for 0.0.0.0:{port} failed: port is already allocated" in taken.stderr
    busy = await sh(conn, "docker rm vllm_node", rc=1)
    assert "container is running: stop the container before removing" in busy.stderr

    assert (await sh(conn, "docker exec vllm_node nvidia-smi -L")).stdout.startswith("GPU 0: ")
    await sh(conn, "docker exec vllm_node false", rc=1)
    await sh(conn, "docker stop vllm_node")  # --rm: gone once stopped
    assert (await sh(conn, "docker ps -a --format '{{.Names}}'")).stdout == ""
    ghost = await sh(conn, "docker exec vllm_node true", rc=1)
    assert "No such container" in ghost.stderr


async def test_hand_written_rows_can_be_stopped_and_started(host: Any, conn: Any) -> None:
    host.add_container(name="old_vllm", ports="0.0.0.0:8888->8000/tcp")
    await sh(conn, "docker stop old_vllm")
    assert (await sh(conn, "docker ps --format '{{json .}}'")).stdout == ""
    [row] = ps_rows((await sh(conn, "docker ps -a --format '{{json .}}'")).stdout)
    assert row["Names"] == "old_vllm" and row["Status"].startswith("Exited (0)")
    await sh(conn, "docker start old_vllm")
    [c] = parse_docker_ps((await sh(conn, "docker ps --format '{{json .}}'")).stdout)
    assert c.status.startswith("Up") and c.ports == "0.0.0.0:8888->8000/tcp"
    await sh(conn, "docker rm -f old_vllm")
    assert (await sh(conn, "docker ps -aq")).stdout == ""


# --- hf download -------------------------------------------------------------------------------


async def test_hf_download_files_progress_and_token_from_env(host: Any, conn: Any) -> None:
    host.sim_config(
        download_bytes=2 * MIB,
        download_seconds=0.3,
        hf_gated_repos=["org/Gated-8B"],
        hf_missing_repos=["org/Nope"],
        hf_config={"max_position_embeddings": 32768},
    )
    denied = await sh(conn, "env -u HF_TOKEN hf download org/Gated-8B", rc=1)
    assert "Cannot access gated repo" in denied.stderr
    missing = await sh(conn, "hf download org/Nope", rc=1)
    assert "Repository Not Found" in missing.stderr

    secret = "hf_s3cr3tT0ken"
    r = await sh(conn, f"HF_TOKEN={secret} hf download org/Gated-8B")
    snapshot = Path(r.stdout.strip())
    repo_dir = host.hf_cache / "models--org--Gated-8B"
    assert snapshot.parent == repo_dir / "snapshots"
    assert (repo_dir / "refs" / "main").read_text() == snapshot.name
    cfg = json.loads((snapshot / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["torch_dtype"] == "bfloat16"
    assert cfg["max_position_embeddings"] == 32768
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        assert isinstance(cfg[key], int)
    weights = snapshot / "model.safetensors"
    assert weights.is_symlink() and weights.stat().st_size == 2 * MIB
    assert not list(repo_dir.glob("blobs/*.incomplete"))
    updates = re.split(r"[\r\n]", r.stderr)
    assert any(
        re.match(r"model\.safetensors: +\d+%\|.*\| [\d.]+[kM]?/2\.1M \[", u) for u in updates
    )
    assert any(u.startswith("model.safetensors: 100%|██████████| 2.1M/2.1M") for u in updates)
    assert "Fetching 4 files: 100%" in r.stderr and "\r" in r.stderr

    log = (host.sim_dir / "commands.log").read_text()
    assert secret not in log
    assert [c["argv"] for c in host.commands("hf")][-1] == ["hf", "download", "org/Gated-8B"]

    local = host.root / "local-model"
    r = await sh(conn, f"hf download org/Model-8B config.json --local-dir {local} --quiet")
    assert r.stdout.strip() == str(local) and r.stderr == ""
    assert [p.name for p in local.iterdir() if p.is_file()] == ["config.json"]


async def test_hf_download_cancelled_leaves_a_partial_file_and_resumes(
    host: Any, conn: Any
) -> None:
    host.sim_config(download_bytes=4 * MIB, download_seconds=3)
    client = await asyncssh.connect(**host.connect_kwargs())
    proc = await client.create_process("hf download org/Slow-8B")
    seen = ""
    while not re.search(r"model\.safetensors: +[1-9]\d*%", seen):
        seen += await asyncio.wait_for(proc.stderr.read(200), 10)
    client.close()  # the client goes away: the download dies with its session
    blobs = host.hf_cache / "models--org--Slow-8B" / "blobs"
    partial = await until(lambda: asyncio.to_thread(_partial, blobs), 10)
    await asyncio.sleep(0.5)
    size = partial.stat().st_size
    assert 0 < size < 4 * MIB
    await asyncio.sleep(0.3)
    assert partial.stat().st_size == size, "still downloading after its session ended"

    host.sim_config(download_seconds=0.2)
    r = await sh(conn, "hf download org/Slow-8B")
    assert (Path(r.stdout.strip()) / "model.safetensors").stat().st_size == 4 * MIB
    assert not list(blobs.glob("*.incomplete"))


def _partial(blobs: Path) -> Path | None:
    found = list(blobs.glob("*.incomplete"))
    return found[0] if found else None


async def _is(value: Awaitable[str], want: str) -> bool:
    return await value == want


# --- the command log and the probe's calls -----------------------------------------------------


async def test_command_log_holds_the_exact_argv(host: Any, conn: Any) -> None:
    nasty = "x\"; touch /tmp/pwned; echo $(id) `uname` \\ 'q'\n\ttab é \x01"
    calls = [
        ["docker", "inspect", "--format", "{{.State.Status}}", nasty],
        ["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"],
        ["docker", "ps", "--format", "{{json .}}"],
        ["hf", "download", nasty],
    ]
    t0 = time.time()
    for argv in calls:
        await conn.run(shlex.join(argv))
    got = host.commands()
    assert [c["argv"] for c in got] == calls
    assert all(t0 - 1.5 <= c["ts"] <= time.time() + 1 for c in got)
    assert [c["argv"] for c in host.commands("nvidia-smi")] == [calls[1]]
    assert not await asyncio.to_thread(Path("/tmp/pwned").exists)


async def test_probe_calls_need_no_external_programs(host: Any, conn: Any) -> None:
    """``docker ps --format '{{json .}}'`` and nvidia-smi with an empty PATH: builtins only."""
    host.sim_config(start_delay_s=0.1)
    await sh(conn, launch(free_port()))
    await sh(conn, "docker run -d --name done busybox true")
    assert await until(lambda: _is(status(conn, "done"), "exited 0"))
    env = {"PATH": "/nonexistent", "SPARK_SIM_DIR": str(host.sim_dir)}

    def run(*argv: str) -> str:
        r = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=10)
        assert r.stderr == ""
        return r.stdout

    running = parse_docker_ps(run(str(SHIMS_DIR / "docker"), "ps", "--format", "{{json .}}"))
    assert [(c.name, c.status[:3]) for c in running] == [("vllm_node", "Up ")]
    every = parse_docker_ps(run(str(SHIMS_DIR / "docker"), "ps", "-a", "--format", "{{json .}}"))
    assert [c.name for c in every] == ["done", "vllm_node"]  # newest first
    assert every[0].status.startswith("Exited (0) ")
    gpu = run(
        str(SHIMS_DIR / "nvidia-smi"),
        "--query-gpu=name,memory.total",
        "--format=csv,noheader,nounits",
    )
    assert gpu == "NVIDIA GB10, [N/A]\n"
    assert host.commands()[-1]["argv"][0] == "nvidia-smi"


async def test_stopping_the_host_ends_its_containers(host: Any, conn: Any) -> None:
    host.sim_config(start_delay_s=0.1)
    port = free_port()
    await sh(conn, launch(port))
    await wait_health(port)
    assert len(host.sim_processes()) >= 2  # supervisor + stub server
    await asyncio.to_thread(host.stop)
    await until(lambda: _none(host), 10)
    await until(lambda: refused(port), 5)
    await asyncio.to_thread(host.start)
    async with asyncssh.connect(**host.connect_kwargs()) as again:
        [row] = ps_rows((await sh(again, "docker ps -a --format '{{json .}}'")).stdout)
    assert row["State"] == "exited" and row["Status"].startswith("Exited (")


async def _none(host: Any) -> bool:
    return not host.sim_processes()


def test_stub_runs_by_hand(tmp_path: Path) -> None:
    """``python tests/sim/stub_vllm.py --port P --model X --delay D`` without any simulator."""
    port = free_port()
    stub = Path(__file__).resolve().parents[1] / "sim" / "stub_vllm.py"
    log = (tmp_path / "stub.log").open("wb")
    argv = [sys.executable, str(stub), "--port", str(port), "--model", "X", "--delay", "0.2"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        assert r.json()["data"][0]["id"] == "X"
    finally:
        proc.terminate()
        assert proc.wait(5) == 0
        log.close()
    assert (tmp_path / "stub.log").read_text().rstrip().endswith("Finished server process [1]")
