"""Smoke tests for the real-server harness (tests/servers.py): NATS, SSH hosts, SeaweedFS S3."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioboto3
import asyncssh
import nats
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.servers import (
    SHIMS_DIR,
    SSHD,
    AsyncsshHost,
    NatsServer,
    SeaweedS3,
    SshdHost,
    sleepers,
)

GPU_QUERY = "name,utilization.gpu,memory.used,memory.total,temperature.gpu,power.draw"


async def test_nats_jetstream_survives_restart_on_same_port(nats_server: NatsServer) -> None:
    reconnected = asyncio.Event()

    async def on_reconnect() -> None:
        reconnected.set()

    nc = await nats.connect(
        nats_server.url, reconnected_cb=on_reconnect, reconnect_time_wait=0.1,
        max_reconnect_attempts=-1,
    )  # fmt: skip
    try:
        js = nc.jetstream()
        await js.add_stream(name="SMOKE", subjects=["smoke.>"])
        ack = await js.publish("smoke.a", b"one")
        assert (ack.stream, ack.seq) == ("SMOKE", 1)

        port = nats_server.port
        nats_server.restart()
        assert nats_server.port == port and nats_server.url.endswith(f":{port}")
        await asyncio.wait_for(reconnected.wait(), 10)  # clients that remember the URL come back

        assert (await js.get_msg("SMOKE", 1)).data == b"one"  # file store survived
        ack = await js.publish("smoke.b", b"two")
        assert ack.seq == 2
        assert (await js.stream_info("SMOKE")).state.messages == 2
    finally:
        await nc.close()


def test_nats_kill_then_start_keeps_port_and_data(tmp_path: Path) -> None:
    async def publish(url: str, data: bytes) -> int:
        nc = await nats.connect(url)
        js = nc.jetstream()
        await js.add_stream(name="K", subjects=["k"])
        seq = (await js.publish("k", data)).seq
        await nc.close()
        return seq

    with NatsServer(tmp_path / "nats").start() as server:
        assert asyncio.run(publish(server.url, b"x")) == 1
        server.kill()
        assert not server.running
        server.start()
        assert asyncio.run(publish(server.url, b"y")) == 2


@pytest.fixture(params=["sshd", "asyncssh"])
def any_ssh_host(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    """Each SSH stand-in in turn (the sshd case needs openssh-server)."""
    if request.param == "sshd" and not SSHD.exists():
        pytest.skip(f"{SSHD} missing: install the Debian package openssh-server")
    cls = SshdHost if request.param == "sshd" else AsyncsshHost
    host = cls(tmp_path / request.param).start()
    yield host
    host.close()


async def test_ssh_host_runs_commands_with_shims_first_on_path(any_ssh_host: Any) -> None:
    host = any_ssh_host
    host.add_container(name="vllm_node")
    host.add_container(name="old", image="busybox", status="Exited (0) 2 hours ago", ports="")
    async with asyncssh.connect(**host.connect_kwargs()) as conn:
        assert (await conn.run("echo hi", check=True)).stdout == "hi\n"
        path = (await conn.run("echo $PATH; command -v docker nvidia-smi")).stdout.split()
        assert path[0].startswith(f"{SHIMS_DIR}:")
        assert path[1:] == [str(SHIMS_DIR / "docker"), str(SHIMS_DIR / "nvidia-smi")]

        ps = await conn.run("docker ps --format '{{json .}}'", check=True)
        lines = ps.stdout.splitlines()
        assert len(lines) == 1 and '"Names":"vllm_node"' in lines[0]
        assert '"Image":"nvcr.io/nvidia/vllm:25.09-py3"' in lines[0]
        all_ps = await conn.run("docker ps -a --format '{{json .}}'", check=True)
        assert len(all_ps.stdout.splitlines()) == 2

        gpu = await conn.run(f"nvidia-smi --query-gpu={GPU_QUERY} --format=csv,noheader,nounits")
        assert gpu.stdout == "NVIDIA GB10, 3, [N/A], [N/A], 41, 11.25\n"

        r = await conn.run("cat; echo oops >&2; exit 7", input="piped\n")
        assert (r.stdout, r.stderr, r.exit_status) == ("piped\n", "oops\n", 7)


async def test_docker_delay_runs_a_visible_sleep(any_ssh_host: Any) -> None:
    any_ssh_host.set_docker_delay(0.3)
    async with asyncssh.connect(**any_ssh_host.connect_kwargs()) as conn:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert (await conn.run("docker ps", check=True)).stdout.startswith("CONTAINER ID")
        assert loop.time() - t0 >= 0.3
        any_ssh_host.set_docker_delay(0)
        assert (await conn.run("docker ps -q; echo ok")).stdout.endswith("ok\n")


async def test_ssh_host_refuses_a_changed_host_key(any_ssh_host: Any, tmp_path: Path) -> None:
    wrong = any_ssh_host.write_wrong_known_hosts(tmp_path / "wrong_known_hosts")
    assert wrong.read_text().startswith(f"[127.0.0.1]:{any_ssh_host.port} ssh-ed25519 ")
    kwargs = {**any_ssh_host.connect_kwargs(), "known_hosts": str(wrong)}
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        await asyncssh.connect(**kwargs)


async def test_ssh_host_stop_drops_sessions_and_start_reuses_port(any_ssh_host: Any) -> None:
    host = any_ssh_host
    conn = await asyncssh.connect(**host.connect_kwargs())
    proc = await conn.create_process("sleep 54.321")
    await asyncio.sleep(0.2)
    assert sleepers("54.321")
    await asyncio.to_thread(host.stop)
    await asyncio.wait_for(proc.wait_closed(), 10)  # session dropped with the host
    await asyncio.wait_for(conn.wait_closed(), 10)
    for _ in range(50):  # SIGKILL delivery is asynchronous
        if not sleepers("54.321"):
            break
        await asyncio.sleep(0.05)
    assert not sleepers("54.321"), "remote command outlived the host"
    with pytest.raises(OSError):
        await asyncssh.connect(**host.connect_kwargs())

    host.start()
    async with asyncssh.connect(**host.connect_kwargs()) as conn:
        assert (await conn.run("echo back")).stdout == "back\n"


def _s3(store: SeaweedS3, secret: str | None = None) -> Any:
    session = aioboto3.Session(
        aws_access_key_id=store.access_key,
        aws_secret_access_key=secret or store.secret_key,
        region_name=store.region,
    )
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    return session.client("s3", endpoint_url=store.endpoint_url, config=cfg)


async def test_seaweed_s3_checks_signatures(s3_store: SeaweedS3, unique: str) -> None:
    bucket = f"smoke-{unique}"
    async with _s3(s3_store) as s3:
        await s3.create_bucket(Bucket=bucket)
        await s3.put_object(Bucket=bucket, Key="a.txt", Body=b"hello")
        got = await s3.get_object(Bucket=bucket, Key="a.txt")
        assert await got["Body"].read() == b"hello"

    async with _s3(s3_store, secret="not-the-secret") as bad:
        for call in (
            bad.list_buckets(),
            bad.get_object(Bucket=bucket, Key="a.txt"),
            bad.put_object(Bucket=bucket, Key="b.txt", Body=b"x"),
        ):
            with pytest.raises(ClientError) as err:
                await call
            meta = err.value.response["ResponseMetadata"]
            assert meta["HTTPStatusCode"] == 403
            assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"

    async with _s3(s3_store) as s3:  # the rejected put wrote nothing
        listed = await s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == ["a.txt"]
