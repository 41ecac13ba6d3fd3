"""The shipped NATS permissions (deploy/nats.conf) on a real nats-server: every part works
under its own user, and an outside program can queue host commands and read events but cannot
read the command stream, touch buckets, sign, or read another user's replies."""

from __future__ import annotations

import asyncio
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import nats.errors
import pytest

from app import contracts as c
from app.config import HostConfig, Settings
from tests import stack
from tests.servers import NatsServer, SeaweedS3

USERS = ("web", "executor", "signer", "publisher", "sign-fleet")


def _env_name(user: str) -> str:
    return f"NATS_{user.upper().replace('-', '_')}_PASSWORD"


class ShippedNats(NatsServer):
    """nats-server with deploy/nats.conf (its port, store and monitor port replaced)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        # as deploy/compose.env.example says: a letter, then hex (nats-server parses an
        # environment value like a config value, so "9H…" is a bad number)
        self.passwords = {u: "p" + secrets.token_hex(12) for u in USERS}

    def start(self) -> ShippedNats:
        conf = (stack.REPO / "deploy" / "nats.conf").read_text()
        conf = re.sub(r"(?m)^(port|monitor_port):.*$", "", conf)
        conf = conf.replace("store_dir: /data", f"store_dir: {self.store_dir}")
        path = self.root / "nats.conf"
        path.write_text(conf)
        env = {**os.environ, **{_env_name(u): p for u, p in self.passwords.items()}}
        cmd = [self.binary, "-c", str(path), "-a", "127.0.0.1", "-p", str(self.port or -1)]
        offset = self._spawn(cmd, env=env)
        m = self._wait_for(r"Listening for client connections on [\d.]+:(\d+)", offset)
        self.port = int(m.group(1))
        self._wait_for(r"Server is ready", offset)
        return self

    def settings_for(self, user: str, base: Settings) -> Settings:
        return msgspec.structs.replace(
            base, nats_user=user, nats_password=self.passwords[user]
        )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ShippedNats]:
    srv = ShippedNats(tmp_path / "nats").start()
    yield srv
    srv.stop()


async def _client(server: ShippedNats, user: str, errors: list[Exception]) -> Any:
    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    return await nats.connect(
        server.url, user=user, password=server.passwords[user], error_cb=on_error,
        inbox_prefix=f"_INBOX_{user}", allow_reconnect=False,
    )  # fmt: skip


def _violations(errors: list[Exception]) -> str:
    """The permission violations the server reported (nats-py lower-cases them)."""
    return " | ".join(str(e) for e in errors).lower()


async def test_each_part_runs_under_its_user_and_outsiders_are_fenced(
    tmp_path: Path, server: ShippedNats, s3_store: SeaweedS3, unique: str
) -> None:
    bucket = "perm-" + secrets.token_hex(3)
    await _make_bucket(s3_store, bucket)
    host = HostConfig(alias=f"gpu-{unique}", address="localhost", transport="local")
    base = stack.make_settings(
        tmp_path / "data", server.url, [host],
        s3_endpoint_url=s3_store.endpoint_url, s3_region=s3_store.region, s3_bucket=bucket,
        s3_access_key_id=s3_store.access_key, s3_secret_access_key=s3_store.secret_key,
        signer_tokens={"tok-fleet": "fleet"},
    )  # fmt: skip
    web = server.settings_for("web", base)
    async with stack.executor(server.settings_for("executor", base)):
        async with stack.signer(server.settings_for("signer", base)):
            async with stack.web(web) as url, httpx.AsyncClient(base_url=url, timeout=30) as cl:
                # the whole path works under the shipped users: HTTP → web → executor → events
                r = await cl.post(f"/api/hosts/{host.alias}/probe")
                assert r.status_code == 202, r.text
                events = await stack.sse_events(cl, r.json()["events"])
                assert events[-1]["event"] == "done", events[-1]
                status = (await cl.get("/api/status")).json()
                names = {w["name"] for w in status["workers"]}
                assert {c.EXECUTOR_SERVICE, c.SIGNER_SERVICE} <= names
                signed = await cl.post(
                    "/api/v1/blob/sign", headers={"Authorization": "Bearer tok-fleet"},
                    json={"rel_path": "projects/fleet/a.bin", "op": {"kind": "single_put"}},
                )  # fmt: skip
                assert signed.status_code == 200, signed.text

                # an outside publisher: queues a probe and reads its events ...
                errors: list[Exception] = []
                pub = await _client(server, "publisher", errors)
                try:
                    job_id = "outside-" + secrets.token_hex(4)
                    events_sub = await pub.subscribe(c.evt_job_filter(job_id))
                    await pub.publish(
                        c.cmd_host(host.alias, "probe"), b"{}", headers={"Nats-Msg-Id": job_id}
                    )
                    kinds = []
                    while not kinds or kinds[-1] not in ("done", "failed"):
                        msg = await events_sub.next_msg(timeout=20)
                        kinds.append(c.decode_event(msg.data).kind)
                    assert kinds[-1] == "done", kinds

                    # ... but cannot read the command stream, buckets, or sign
                    await pub.subscribe(c.CMD_HOST_WILDCARD)
                    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                        await pub.request(f"$JS.API.CONSUMER.CREATE.{c.CMD_STREAM}", b"{}",
                                          timeout=1.0)  # fmt: skip
                    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                        await pub.request(f"$KV.{c.JOBS_BUCKET}.{job_id}", b"x", timeout=1.0)
                    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                        await pub.request(c.blob_sign("fleet"), b"{}", timeout=1.0)
                    await pub.subscribe("_INBOX.>")  # nobody else's replies
                    await asyncio.sleep(0.3)
                    seen = _violations(errors)
                    assert 'subscription to "_inbox.>"' in seen, seen
                    assert f'subscription to "{c.CMD_HOST_WILDCARD}"' in seen, seen
                    assert 'publish to "$js.api.consumer.create' in seen, seen
                    assert f'publish to "$kv.{c.JOBS_BUCKET}' in seen, seen
                    assert f'publish to "{c.blob_sign("fleet")}"' in seen, seen
                finally:
                    await pub.close()

                # a namespace user signs for its namespace only
                errors = []
                fleet = await _client(server, "sign-fleet", errors)
                try:
                    body = msgspec.json.encode(
                        {"rel_path": "projects/fleet/b.bin", "op": {"kind": "single_put"}}
                    )
                    ans = await fleet.request(c.blob_sign("fleet"), body, timeout=10)
                    assert msgspec.json.decode(ans.data)["method"] == "PUT"
                    with pytest.raises((nats.errors.NoRespondersError, nats.errors.TimeoutError)):
                        await fleet.request(c.blob_sign("other"), body, timeout=1.0)
                    await asyncio.sleep(0.3)
                    assert f'publish to "{c.blob_sign("other")}"' in _violations(errors)
                finally:
                    await fleet.close()
    log = server.log_text()
    for password in server.passwords.values():
        assert password not in log


async def _make_bucket(store: SeaweedS3, name: str) -> None:
    import aioboto3

    session = aioboto3.Session()
    async with session.client(
        "s3", endpoint_url=store.endpoint_url, region_name=store.region,
        aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
    ) as s3:  # fmt: skip
        await s3.create_bucket(Bucket=name)
