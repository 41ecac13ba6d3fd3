"""The blob signer end to end: HTTP front → NATS → signer worker → SeaweedFS, which checks
every signature. Multipart and single uploads through the signed URLs, refusals by the store,
every rule with its status and code, both request shapes, a chunked 10,000-part answer, and
the compact form the web front asks for and expands (a damaged one is a clear 5xx)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aioboto3
import httpx
import msgspec
import nats
import pytest
from botocore.config import Config

from app import contracts as c
from app.bus import connect
from app.config import HostConfig, Settings
from app.errors import BusUnavailable
from app.signer import chunks, compact
from app.signer.sigv4 import Credentials, Presigner
from tests import stack
from tests.servers import NatsServer, SeaweedS3, free_port

MIB = 2**20
TOKENS = {"tok-a-0123456789": "ns-a", "tok-b-0123456789": "ns-b"}


def admin_s3(store: SeaweedS3) -> Any:
    session = aioboto3.Session(
        aws_access_key_id=store.access_key,
        aws_secret_access_key=store.secret_key,
        region_name=store.region,
    )
    cfg = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    return session.client("s3", endpoint_url=store.endpoint_url, config=cfg)


@pytest.fixture(scope="module")
def bucket(s3_store: SeaweedS3) -> Iterator[str]:
    name = "signer-" + os.urandom(3).hex()

    async def create() -> None:
        async with admin_s3(s3_store) as s3:
            await s3.create_bucket(Bucket=name)
            await s3.create_bucket(Bucket=name + "-pub")
            await s3.put_object(Bucket=name + "-pub", Key="shared/parent.bin", Body=b"parent")
            await s3.put_object(Bucket=name + "-pub", Key="private/x.bin", Body=b"private")

    asyncio.run(create())
    yield name


def signer_settings(
    tmp_path: Path, nats_url: str, store: SeaweedS3, bucket: str, **kw: Any
) -> Settings:
    base: dict[str, Any] = dict(
        s3_endpoint_url=store.endpoint_url,
        s3_region=store.region,
        s3_bucket=bucket,
        s3_access_key_id=store.access_key,
        s3_secret_access_key=store.secret_key,
        signer_tokens=dict(TOKENS),
        signer_get_allow=[f"s3://{bucket}-pub/shared/"],
    )
    base.update(kw)
    local = HostConfig(alias="local", address="localhost", transport="local")
    return stack.make_settings(tmp_path / "data", nats_url, [local], **base)


@pytest.fixture
async def front(
    tmp_path: Path, nats_server: Any, s3_store: SeaweedS3, bucket: str
) -> AsyncIterator[tuple[str, Settings]]:
    settings = signer_settings(tmp_path, nats_server.url, s3_store, bucket)
    # the web front gets no S3 credentials at all: signing happens in the signer only
    front_settings = msgspec.structs.replace(
        settings, s3_access_key_id=None, s3_secret_access_key=None, s3_endpoint_url=None
    )
    async with stack.signer(settings), stack.web(front_settings) as base:
        yield base, settings


def auth(token: str = "tok-a-0123456789") -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def sign(
    client: httpx.AsyncClient, base: str, body: Any, token: str = "tok-a-0123456789"
) -> httpx.Response:
    return await client.post(f"{base}/api/v1/blob/sign", json=body, headers=auth(token))


def reference_at(url: str, store: SeaweedS3) -> tuple[Presigner, float]:
    """A fresh presigner for the store, and the second ``url`` was signed at."""
    query = parse_qs(urlsplit(url).query)
    stamp = time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ")
    now = float(time.mktime(stamp) - time.timezone)
    return Presigner(Credentials(store.access_key, store.secret_key), store.region,
                     store.endpoint_url), now  # fmt: skip


def complete_xml(etags: list[str]) -> bytes:
    parts = "".join(
        f"<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        for n, etag in enumerate(etags, start=1)
    )
    return f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()


async def test_multipart_upload_through_signed_urls(
    front: tuple[str, Settings], s3_store: SeaweedS3
) -> None:
    base, settings = front
    data = os.urandom(5 * MIB) + os.urandom(5 * MIB) + os.urandom(123_457)
    async with httpx.AsyncClient(timeout=60) as client:
        r = await sign(
            client,
            base,
            {
                "rel_path": "projects/ns-a/models/m1/model.safetensors",
                "op": {"kind": "multipart_put", "parts": 3, "part_size_bytes": 5 * MIB},
            },
        )
        assert r.status_code == 200, r.text
        ans = r.json()
        assert ans["kind"] == "s3_multipart"
        assert ans["uri"] == f"s3://{settings.s3_bucket}/projects/ns-a/models/m1/model.safetensors"
        assert ans["partSizeBytes"] == 5 * MIB and len(ans["partUrls"]) == 3
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ans["expiresAt"])
        etags = []
        for n, url in enumerate(ans["partUrls"]):
            chunk = data[n * 5 * MIB : (n + 1) * 5 * MIB]
            put = await client.put(url, content=chunk)
            assert put.status_code == 200, put.text
            etags.append(put.headers["etag"])
        listed = await client.get(ans["listPartsUrl"])
        assert listed.status_code == 200 and listed.text.count("<PartNumber>") == 3
        done = await client.post(ans["completeUrl"], content=complete_xml(etags))
        assert done.status_code == 200 and "<Error>" not in done.text, done.text
        got = await sign(
            client,
            base,
            {"rel_path": "projects/ns-a/models/m1/model.safetensors", "op": {"kind": "single_get"}},
        )
        body = (await client.get(got.json()["url"])).content
    assert len(body) == len(data) and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    async with admin_s3(s3_store) as s3:
        head = await s3.head_object(
            Bucket=settings.s3_bucket, Key="projects/ns-a/models/m1/model.safetensors"
        )
        assert head["ContentLength"] == len(data)


async def test_abort_url_ends_the_upload(front: tuple[str, Settings]) -> None:
    base, _ = front
    async with httpx.AsyncClient(timeout=30) as client:
        ans = (
            await sign(
                client,
                base,
                {
                    "target": {"kind": "artifact", "rel_path": "projects/ns-a/aborted.bin"},
                    "op": {
                        "kind": "put_artifact",
                        "multipart_hint": {"max_parts": 2, "part_size_bytes": 64 * MIB},
                    },
                },
            )
        ).json()
        assert ans["kind"] == "s3_multipart" and len(ans["partUrls"]) == 2
        assert (await client.put(ans["partUrls"][0], content=b"x" * 1000)).status_code == 200
        assert (await client.delete(ans["abortUrl"])).status_code == 204
        after = await client.put(ans["partUrls"][1], content=b"y" * 1000)
        assert after.status_code == 404 and "NoSuchUpload" in after.text


async def test_single_put_and_get_both_shapes(front: tuple[str, Settings]) -> None:
    base, settings = front
    payload = os.urandom(4096)
    async with httpx.AsyncClient(timeout=30) as client:
        put = (
            await sign(
                client, base, {"rel_path": "projects/ns-a/one.bin", "op": {"kind": "single_put"}}
            )
        ).json()
        assert put["kind"] == "single_put" and put["method"] == "PUT" and put["headers"] == {}
        assert (await client.put(put["url"], content=payload)).status_code == 200
        put2 = (
            await sign(
                client,
                base,
                {
                    "target": {"kind": "artifact", "rel_path": "projects/ns-a/two.bin"},
                    "op": {"kind": "put_artifact"},
                },
            )
        ).json()
        assert put2["kind"] == "single_put"
        assert (await client.put(put2["url"], content=payload[::-1])).status_code == 200
        get = (
            await sign(
                client,
                base,
                {
                    "target": {
                        "kind": "blob",
                        "uri": f"s3://{settings.s3_bucket}-pub/shared/parent.bin",
                    },
                    "op": {"kind": "get_blob"},
                },
            )
        ).json()
        assert get["kind"] == "single_get" and get["method"] == "GET"
        assert (await client.get(get["url"])).content == b"parent"
        get2 = (
            await sign(
                client,
                base,
                {
                    "uri": f"s3://{settings.s3_bucket}-pub/shared/parent.bin",
                    "op": {"kind": "single_get"},
                },
            )
        ).json()
        assert (await client.get(get2["url"])).content == b"parent"
        mine = (
            await sign(
                client, base, {"rel_path": "projects/ns-a/one.bin", "op": {"kind": "single_get"}}
            )
        ).json()
        assert (await client.get(mine["url"])).content == payload


async def test_store_refuses_tampered_expired_other_key_other_part(
    front: tuple[str, Settings], s3_store: SeaweedS3
) -> None:
    base, settings = front
    bucket = settings.s3_bucket
    assert bucket
    async with httpx.AsyncClient(timeout=30) as client:
        ans = (
            await sign(
                client,
                base,
                {
                    "rel_path": "projects/ns-a/t.bin",
                    "op": {"kind": "multipart_put", "parts": 2, "part_size_bytes": 5 * MIB},
                },
            )
        ).json()
        part1 = ans["partUrls"][0]
        sig = part1[-64:]
        tampered = part1[:-64] + ("0" if sig[0] != "0" else "1") + sig[1:]
        other_part = part1.replace("partNumber=1&", "partNumber=2&")
        other_key = part1.replace("/t.bin?", "/u.bin?")
        longer = part1.replace("X-Amz-Expires=604800", "X-Amz-Expires=604799")
        for url in (tampered, other_part, other_key, longer):
            r = await client.put(url, content=b"z" * 100)
            assert r.status_code == 403, (url, r.status_code, r.text)
        assert (await client.put(part1, content=b"z" * 100)).status_code == 200
        # a URL whose clock ran out: signed two hours ago for one minute
        presigner = Presigner(
            Credentials(s3_store.access_key, s3_store.secret_key),
            s3_store.region,
            s3_store.endpoint_url,
        )
        old = presigner.get_url(f"{bucket}-pub", "shared/parent.bin", 60, now=time.time() - 7200)
        fresh = presigner.get_url(f"{bucket}-pub", "shared/parent.bin", 60)
        expired = await client.get(old)
        assert expired.status_code == 403, expired.text
        assert (await client.get(fresh)).content == b"parent"
        wrong_secret = Presigner(
            Credentials(s3_store.access_key, "not-the-secret"),
            s3_store.region,
            s3_store.endpoint_url,
        )
        assert (
            await client.get(wrong_secret.get_url(f"{bucket}-pub", "shared/parent.bin", 60))
        ).status_code == 403


def mp(parts: int, size: int = 5 * MIB) -> dict[str, Any]:
    return {"kind": "multipart_put", "parts": parts, "part_size_bytes": size}


PUT, GET = {"kind": "single_put"}, {"kind": "single_get"}
A = "projects/ns-a/x"
PUB = "s3://BUCKET-pub/shared/x"
HINT = {"max_parts": 20_000, "part_size_bytes": 64 * MIB}
RULES: list[tuple[dict[str, Any] | bytes, int, str]] = [
    ({"rel_path": "projects/ns-b/x.bin", "op": PUT}, 403, "OUTSIDE_NAMESPACE"),
    ({"rel_path": "elsewhere/x.bin", "op": GET}, 403, "OUTSIDE_NAMESPACE"),
    ({"rel_path": "projects/ns-a/../ns-b/x", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "/projects/ns-a/x", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "projects/ns-a//x", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "projects/ns-a/./x", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "projects\\ns-a\\x", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "projects/ns-a/a\u0007b", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "projects/ns-a/%2e%2e/ns-b/x", "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": "projects/ns-a/" + "k" * 1020, "op": PUT}, 400, "BAD_PATH"),
    ({"rel_path": A, "op": mp(10_001)}, 400, "TOO_MANY_PARTS"),
    ({"rel_path": A, "op": mp(0)}, 400, "BAD_PARTS"),
    ({"rel_path": A, "op": mp(-3)}, 400, "BAD_PARTS"),
    ({"rel_path": A, "op": mp(2, MIB)}, 400, "BAD_PART_SIZE"),
    ({"rel_path": A, "op": mp(2, 6 * 2**30)}, 400, "BAD_PART_SIZE"),
    (
        {"target": {"kind": "artifact", "rel_path": A},
         "op": {"kind": "put_artifact", "multipart_hint": HINT}},
        400, "TOO_MANY_PARTS",
    ),
    ({"uri": PUB, "op": PUT}, 400, "URI_WRITE_FORBIDDEN"),
    ({"target": {"kind": "blob", "uri": PUB}, "op": {"kind": "put_artifact"}}, 400,
     "URI_WRITE_FORBIDDEN"),
    ({"uri": PUB, "op": mp(1)}, 400, "URI_WRITE_FORBIDDEN"),
    ({"uri": "s3://BUCKET-pub/private/x.bin", "op": GET}, 403, "NOT_ALLOWED"),
    ({"uri": "s3://BUCKET/projects/ns-b/x", "op": GET}, 403, "NOT_ALLOWED"),
    ({"uri": "s3://BUCKET-pub/shared/../private/x.bin", "op": GET}, 400, "BAD_URI"),
    ({"uri": "https://example.com/x", "op": GET}, 400, "BAD_URI"),
    ({"rel_path": A, "uri": PUB, "op": GET}, 400, "BAD_TARGET"),
    ({"op": GET}, 400, "BAD_TARGET"),
    ({"rel_path": A, "op": {"kind": "delete_everything"}}, 400, "BAD_REQUEST"),
    ({"rel_path": A, "op": PUT, "namespace": "ns-b"}, 400, "BAD_REQUEST"),
    (b"{not json", 400, "BAD_REQUEST"),
]  # fmt: skip


async def test_every_rule_with_its_status_and_code(front: tuple[str, Settings]) -> None:
    base, settings = front
    async with httpx.AsyncClient(timeout=30) as client:
        for body, status, code in RULES:
            if isinstance(body, bytes):
                r = await client.post(f"{base}/api/v1/blob/sign", content=body, headers=auth())
            else:
                text = (
                    msgspec.json.encode(body).decode().replace("BUCKET", settings.s3_bucket or "")
                )
                r = await client.post(f"{base}/api/v1/blob/sign", content=text, headers=auth())
            assert (r.status_code, r.json().get("code")) == (status, code), (body, r.text)
            assert set(r.json()) == {"error", "code"}
        ok = {"rel_path": "projects/ns-a/x", "op": {"kind": "single_put"}}
        for headers in (
            {},
            {"Authorization": "Bearer nope"},
            {"Authorization": "Basic tok-a-0123456789"},
            {"Authorization": "Bearer"},
        ):
            r = await client.post(f"{base}/api/v1/blob/sign", json=ok, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == "UNAUTHORIZED"
        # token B signs only under B's prefix
        assert (await sign(client, base, ok, token="tok-b-0123456789")).json()[
            "code"
        ] == "OUTSIDE_NAMESPACE"
        ok_b = {"rel_path": "projects/ns-b/x", "op": {"kind": "single_put"}}
        assert (await sign(client, base, ok_b, token="tok-b-0123456789")).status_code == 200


async def test_store_unreachable_is_503_and_no_signer_is_503(
    tmp_path: Path, nats_server: Any, s3_store: SeaweedS3, bucket: str
) -> None:
    dead = signer_settings(
        tmp_path,
        nats_server.url,
        s3_store,
        bucket,
        s3_endpoint_url=f"http://127.0.0.1:{free_port()}",
    )
    multipart = {
        "rel_path": "projects/ns-a/x",
        "op": {"kind": "multipart_put", "parts": 2, "part_size_bytes": 5 * MIB},
    }
    async with stack.web(dead) as base, httpx.AsyncClient(timeout=60) as client:
        r = await sign(client, base, multipart)
        assert (r.status_code, r.json()["code"]) == (503, "SIGNER_UNAVAILABLE")
        async with stack.signer(dead):
            r = await sign(client, base, multipart)
            assert (r.status_code, r.json()["code"]) == (503, "STORE_UNAVAILABLE"), r.text
            assert s3_store.secret_key not in r.text


async def test_chunked_10000_part_answer_over_nats_and_audit(
    front: tuple[str, Settings], s3_store: SeaweedS3
) -> None:
    _, settings = front
    bus = await connect(settings, name="test-client")
    try:
        audit = await bus.js.subscribe(c.evt_blob("ns-a", "signed"), ordered_consumer=True)
        inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(inbox)
        body = msgspec.json.encode(
            {
                "rel_path": "projects/ns-a/big/weights.bin",
                "op": {"kind": "multipart_put", "parts": 10_000, "part_size_bytes": 64 * MIB},
            }
        )
        await bus.nc.publish(c.blob_sign("ns-a"), body, reply=inbox)
        msgs = [await sub.next_msg(timeout=30)]
        while c.CHUNKS_HEADER not in (msgs[-1].headers or {}):
            msgs.append(await sub.next_msg(timeout=30))
        total = int((msgs[-1].headers or {})[c.CHUNKS_HEADER])
        assert total == len(msgs)
        assert total > 1
        assert [int((m.headers or {})[c.CHUNK_HEADER]) for m in msgs] == list(range(total))
        assert all(len(m.data) <= bus.nc.max_payload for m in msgs)
        whole = b"".join(m.data for m in msgs)
        assert int((msgs[-1].headers or {})[c.CHUNK_BYTES_HEADER]) == len(whole)
        assert len(whole) > bus.nc.max_payload
        ans = msgspec.json.decode(whole)
        urls = ans["partUrls"]
        assert len(urls) == 10_000
        # exactly the URLs a fresh presigner makes for that upload at that second
        ref, now = reference_at(urls[0], s3_store)
        assert urls == ref.part_urls(
            settings.s3_bucket or "",
            "projects/ns-a/big/weights.bin",
            ans["uploadId"],
            10_000,
            settings.signer_ttl_s,
            now,
        )
        async with httpx.AsyncClient(timeout=30) as client:
            assert (await client.put(urls[-1], content=b"last part")).status_code == 200
        event = await audit.next_msg(timeout=10)
        raw = event.data.decode()
        data = msgspec.json.decode(event.data)["data"]
        assert data["namespace"] == "ns-a" and data["op"] == "multipart_put"
        assert data["key"] == "projects/ns-a/big/weights.bin" and data["parts"] == 10_000
        for secret in ("X-Amz-Signature", "http", ans["uploadId"], s3_store.secret_key):
            assert secret not in raw
        # on the bus the subject is the namespace: ns-b cannot write under ns-a
        inbox2 = bus.nc.new_inbox()
        sub2 = await bus.nc.subscribe(inbox2)
        one = msgspec.json.encode({"rel_path": "projects/ns-a/x", "op": {"kind": "single_put"}})
        await bus.nc.publish(c.blob_sign("ns-b"), one, reply=inbox2)
        refused = await sub2.next_msg(timeout=10)
        assert (refused.headers or {})["Nats-Service-Error"] == "OUTSIDE_NAMESPACE"
        assert (refused.headers or {})["Nats-Service-Error-Code"] == "403"
    finally:
        await bus.close()


async def test_http_10000_parts_end_to_end(front: tuple[str, Settings]) -> None:
    base, _ = front
    async with httpx.AsyncClient(timeout=60) as client:
        r = await sign(
            client,
            base,
            {
                "rel_path": "projects/ns-a/big2.bin",
                "op": {"kind": "multipart_put", "parts": 10_000, "part_size_bytes": 64 * MIB},
            },
        )
        assert r.status_code == 200
        urls = r.json()["partUrls"]
        assert len(urls) == 10_000 and len(set(urls)) == 10_000
        assert [int(parse_qs(urlsplit(u).query)["partNumber"][0]) for u in urls] == list(
            range(1, 10_001)
        )
        assert (await client.put(urls[4999], content=b"middle")).status_code == 200


async def test_concurrent_big_answers_do_not_mix(front: tuple[str, Settings]) -> None:
    """Several chunked answers at once from one replica: each arrives whole and its own."""
    base, _ = front
    async with httpx.AsyncClient(timeout=60) as client:

        async def one(i: int) -> dict[str, Any]:
            body = {"rel_path": f"projects/ns-a/many/{i}.bin", "op": mp(4000 + i, 8 * MIB)}
            r = await sign(client, base, body)
            assert r.status_code == 200, r.text
            answer: dict[str, Any] = r.json()
            return answer

        answers = await asyncio.gather(*(one(i) for i in range(6)))
    assert len({a["uploadId"] for a in answers}) == 6
    for i, a in enumerate(answers):
        assert a["uri"].endswith(f"/many/{i}.bin") and len(a["partUrls"]) == 4000 + i
        assert all(f"/many/{i}.bin?uploadId=" in u for u in a["partUrls"])


async def test_public_endpoint_is_the_host_signed_into_urls(
    tmp_path: Path, nats_server: Any, s3_store: SeaweedS3, bucket: str
) -> None:
    """The signer reaches the store at 127.0.0.1; clients at ``localhost``: URLs carry the
    latter (the signed Host is the one the client reaches) and the store accepts them."""
    public = s3_store.endpoint_url.replace("127.0.0.1", "localhost")
    settings = signer_settings(tmp_path, nats_server.url, s3_store, bucket,
                               s3_public_endpoint_url=public)  # fmt: skip
    async with stack.signer(settings), stack.web(settings) as base:
        async with httpx.AsyncClient(timeout=30) as client:
            ans = (
                await sign(client, base, {"rel_path": "projects/ns-a/pub.bin", "op": mp(1)})
            ).json()
            assert all(u.startswith(f"{public}/{bucket}/") for u in ans["partUrls"])
            put = await client.put(ans["partUrls"][0], content=b"via the public name")
            assert put.status_code == 200, put.text
            xml = complete_xml([put.headers["etag"]])
            assert (await client.post(ans["completeUrl"], content=xml)).status_code == 200
            got = (
                await sign(client, base, {"rel_path": "projects/ns-a/pub.bin", "op": GET})
            ).json()
            assert (await client.get(got["url"])).content == b"via the public name"
            # the same URL sent to the other name does not match its signature
            other = got["url"].replace("localhost", "127.0.0.1")
            assert (await client.get(other)).status_code == 403


PERMISSIONS = """
authorization {
  users = [
    { user: signer, password: signer-pass, permissions: {
        subscribe: { allow: ["spark.cmd.blob.sign.*", "_INBOX.>", "$SRV.>"] }
        publish: { allow: ["_INBOX.>", "spark.evt.blob.>", "$JS.API.>", "$SRV.>"] }
        allow_responses: { max: 64 }
    }}
    { user: builder, password: builder-pass, permissions: {
        publish: { allow: ["spark.cmd.blob.sign.ns-a"] }
        subscribe: { allow: ["_INBOX.>"] }
    }}
  ]
}
"""


class FencedNats(NatsServer):
    """nats-server with the permission lines of docs/signer.md."""

    def start(self) -> FencedNats:
        conf = self.root / "fenced.conf"
        conf.write_text(PERMISSIONS)
        cmd = [self.binary, "-c", str(conf), "-a", "127.0.0.1", "-p", str(self.port or -1), "-js"]
        offset = self._spawn([*cmd, "-sd", str(self.store_dir)])
        m = self._wait_for(r"Listening for client connections on [\d.]+:(\d+)", offset)
        self.port = int(m.group(1))
        self._wait_for(r"Server is ready", offset)
        return self


async def test_documented_permissions_fence_namespaces(
    tmp_path: Path, s3_store: SeaweedS3, bucket: str
) -> None:
    server = FencedNats(tmp_path / "fenced").start()
    try:
        url = f"nats://signer:signer-pass@127.0.0.1:{server.port}"
        settings = signer_settings(tmp_path, url, s3_store, bucket)
        errors: list[Exception] = []

        async def on_error(exc: Exception) -> None:
            errors.append(exc)

        async with stack.signer(settings):
            nc = await nats.connect(f"nats://builder:builder-pass@127.0.0.1:{server.port}",
                                    error_cb=on_error)  # fmt: skip
            try:
                mine = msgspec.json.encode({"rel_path": "projects/ns-a/f.bin", "op": PUT})
                async with chunks.request(nc, c.blob_sign("ns-a"), mine, 10) as reply:
                    assert reply.error is None
                    assert msgspec.json.decode(await reply.body())["kind"] == "single_put"
                theirs = msgspec.json.encode({"rel_path": "projects/ns-b/f.bin", "op": PUT})
                with pytest.raises(BusUnavailable):
                    async with chunks.request(nc, c.blob_sign("ns-b"), theirs, 2):
                        pass
                assert any("permissions violation" in str(e).lower() for e in errors), errors
            finally:
                await nc.close()
    finally:
        server.close()


# --- the compact form (Spark-Answer: compact), as the web front asks for it ---------------


async def test_compact_10000_part_answer_over_nats_is_one_message_of_the_signed_urls(
    front: tuple[str, Settings], s3_store: SeaweedS3
) -> None:
    _, settings = front
    bus = await connect(settings, name="test-compact")
    try:
        body = msgspec.json.encode({"rel_path": "projects/ns-a/big/c.bin", "op": mp(10_000)})
        inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(inbox)
        ask = {c.ANSWER_HEADER: c.ANSWER_COMPACT}
        await bus.nc.publish(c.blob_sign("ns-a"), body, reply=inbox, headers=ask)
        msg = await sub.next_msg(timeout=30)
        headers = msg.headers or {}
        assert (headers[c.CHUNK_HEADER], headers[c.CHUNKS_HEADER]) == ("0", "1")  # one message
        assert headers[c.ANSWER_HEADER] == c.ANSWER_COMPACT
        data = msg.data
        assert len(data) == int(headers[c.CHUNK_BYTES_HEADER]) < bus.nc.max_payload
        assert s3_store.secret_key.encode() not in data
        ans = msgspec.json.decode(compact.expand(data))
        urls = ans["partUrls"]
        ref, now = reference_at(urls[0], s3_store)
        bucket = settings.s3_bucket or ""
        key = "projects/ns-a/big/c.bin"
        assert urls == ref.part_urls(
            bucket, key, ans["uploadId"], 10_000, settings.signer_ttl_s, now
        )
        assert ans["completeUrl"] == ref.complete_url(
            bucket, key, ans["uploadId"], settings.signer_ttl_s, now
        )
    finally:
        await bus.close()


async def test_http_answer_from_the_compact_form_works_against_the_store(
    front: tuple[str, Settings],
) -> None:
    """The front asks for the compact form and expands it: part 1, 5,000 and 10,000 upload,
    a part URL with another part's signature does not."""
    base, _ = front
    async with httpx.AsyncClient(timeout=60) as client:
        r = await sign(client, base, {"rel_path": "projects/ns-a/big3.bin", "op": mp(10_000)})
        assert r.status_code == 200, r.text
        assert r.headers["content-type"].startswith("application/json")
        ans = r.json()
        urls = ans["partUrls"]
        assert len(urls) == 10_000 and ans["kind"] == "s3_multipart"
        for n in (1, 5000, 10_000):
            put = await client.put(urls[n - 1], content=b"part %d" % n)
            assert put.status_code == 200, put.text
        swapped = urls[1][:-64] + urls[2][-64:]
        assert (await client.put(swapped, content=b"x")).status_code == 403
        listed = await client.get(ans["listPartsUrl"])
        assert listed.status_code == 200 and listed.text.count("<PartNumber>") == 3


@pytest.fixture
async def fake_signer_front(
    tmp_path: Path, nats_server: Any, s3_store: SeaweedS3, bucket: str
) -> AsyncIterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    """The web front with a stand-in signer that answers each request with the next
    (body, headers) of the list the test fills (and the ones after it, up to the message with
    ``Spark-Chunks``)."""
    settings = signer_settings(tmp_path, nats_server.url, s3_store, bucket)
    answers: list[tuple[bytes, dict[str, str]]] = []
    nc = await nats.connect(nats_server.url)

    async def on_request(msg: Any) -> None:
        data, headers = answers.pop(0)
        await nc.publish(msg.reply, data, headers=headers)
        while answers and c.CHUNK_HEADER in headers and c.CHUNKS_HEADER not in headers:
            data, headers = answers.pop(0)  # the rest of a chunked answer
            await nc.publish(msg.reply, data, headers=headers)

    await nc.subscribe(c.BLOB_SIGN_WILDCARD, cb=on_request)
    await nc.flush()
    try:
        async with stack.web(settings) as base:
            yield base, answers
    finally:
        await nc.close()


def one_message(data: bytes, **extra: str) -> tuple[bytes, dict[str, str]]:
    headers = {c.ANSWER_HEADER: c.ANSWER_COMPACT, c.CHUNK_HEADER: "0", c.CHUNKS_HEADER: "1",
               c.CHUNK_BYTES_HEADER: str(len(data))}  # fmt: skip
    headers.update(extra)
    return data, headers


async def test_malformed_or_short_compact_answer_is_a_clear_5xx(
    fake_signer_front: tuple[str, list[tuple[bytes, dict[str, str]]]],
) -> None:
    base, answers = fake_signer_front
    head = msgspec.json.encode(
        {
            "answer": {"kind": "s3_multipart", "uri": "s3://b/k", "uploadId": "u",
                       "partSizeBytes": 5 * MIB, "partUrls": [], "completeUrl": "c",
                       "abortUrl": "a", "listPartsUrl": "l", "expiresAt": "e"},
            "partUrl": {"prefix": "http://s/b/k?uploadId=u&partNumber=", "suffix": "&S="},
            "parts": 3,
        }
    )  # fmt: skip
    cases = [
        (one_message(head + b"\n" + bytes(64)), 502, "BAD_COMPACT"),  # a signature short
        (one_message(b"{torn head\n" + bytes(96)), 502, "BAD_COMPACT"),
        (one_message(head), 502, "BAD_COMPACT"),  # no newline, no signatures
        (one_message(head + b"\n" + bytes(96), **{c.CHUNK_BYTES_HEADER: "999"}), 500, "BAD_CHUNKS"),
    ]
    async with httpx.AsyncClient(timeout=30) as client:
        for answer, status, code in cases:
            answers.append(answer)
            r = await sign(client, base, {"rel_path": "projects/ns-a/k", "op": mp(3)})
            assert r.status_code == status, r.text
            assert r.json() == {"error": r.json()["error"], "code": code}
            assert "Traceback" not in r.text
        answers.append(one_message(head + b"\n" + bytes(96)))  # a whole one still expands
        r = await sign(client, base, {"rel_path": "projects/ns-a/k", "op": mp(3)})
        assert r.status_code == 200
        assert r.json()["partUrls"][2] == "http://s/b/k?uploadId=u&partNumber=3&S=" + "00" * 32


async def test_front_relays_a_full_answer_from_a_signer_without_the_compact_form(
    fake_signer_front: tuple[str, list[tuple[bytes, dict[str, str]]]],
) -> None:
    """A signer that ignores ``Spark-Answer: compact`` (an older replica) answers in full, in
    chunks: the front streams that on unchanged."""
    base, answers = fake_signer_front
    full = msgspec.json.encode({"kind": "s3_multipart", "partUrls": ["u1", "u2", "u3"]})
    answers.append((full[:10], {c.CHUNK_HEADER: "0"}))
    answers.append((full[10:], {c.CHUNK_HEADER: "1", c.CHUNKS_HEADER: "2",
                                c.CHUNK_BYTES_HEADER: str(len(full))}))  # fmt: skip
    async with httpx.AsyncClient(timeout=30) as client:
        r = await sign(client, base, {"rel_path": "projects/ns-a/k", "op": mp(3)})
    assert r.status_code == 200 and r.content == full
