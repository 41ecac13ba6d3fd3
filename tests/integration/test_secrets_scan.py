"""A full scenario with known secret values (the S3 secret, an HF token, an NGC key, API and
signer tokens, the webhook secret, the redaction key, the swap lock's token, a value the
gateway redacts), then every log line, event, job record, page, API answer and error, and every
command the host received, is searched for each of them."""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from pathlib import Path
from typing import Any

import aioboto3
import httpx
import msgspec
import pytest

from app import contracts as c
from app.access.tokens import ApiToken
from tests import stack
from tests.servers import SeaweedS3

PAGES = ("/", "/hosts", "/jobs", "/models", "/services", "/transfers", "/connectivity",
         "/settings", "/api/status", "/api/hosts", "/api/jobs", "/api/endpoints",
         "/api/deep-health", "/api/connectivity", "/api/services", "/api/models",
         "/api/swap/lock", "/api/schedule", "/metrics")  # fmt: skip


async def _bucket(store: SeaweedS3, name: str) -> None:
    session = aioboto3.Session()
    async with session.client(
        "s3", endpoint_url=store.endpoint_url, region_name=store.region,
        aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key,
    ) as s3:  # fmt: skip
        await s3.create_bucket(Bucket=name)


async def test_no_secret_shows_anywhere(
    tmp_path: Path, nats_server: Any, hf_host: Any, s3_store: SeaweedS3, unique: str,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG)
    ops, app_token, signer_token = (secrets.token_urlsafe(24) for _ in range(3))
    hf_token, ngc_key = "hf_" + secrets.token_hex(16), "nvapi-" + secrets.token_hex(20)
    hook_secret, redaction_key = secrets.token_hex(16), secrets.token_hex(32)
    private = f"dana.{secrets.token_hex(4)}@example.org"  # redacted by /scrub
    bucket = "scan-" + secrets.token_hex(3)
    await _bucket(s3_store, bucket)
    alias = f"gpu-{unique}"
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, [stack.ssh_host_config(alias, hf_host)],
        known_hosts=str(hf_host.known_hosts_path),
        api_tokens=[ApiToken(name="ops", scopes=["control"], token=ops),
                    ApiToken(name="app", scopes=["inference"], token=app_token)],
        signer_tokens={signer_token: "ns-a"}, hf_token=hf_token, ngc_key=ngc_key,
        webhook_urls=["http://127.0.0.1:9/hook"], webhook_secret=hook_secret,
        redaction_key=redaction_key, s3_endpoint_url=s3_store.endpoint_url,
        s3_region=s3_store.region, s3_bucket=bucket, s3_access_key_id=s3_store.access_key,
        s3_secret_access_key=s3_store.secret_key,
    )  # fmt: skip
    hf_host.sim_config(hf_gated_repos=["org/gated"],
                       registry_key_sha256=[hashlib.sha256(ngc_key.encode()).hexdigest()])
    texts: list[str] = [repr(settings)]
    lock_token = ""
    async with stack.executor(settings) as bus, stack.signer(settings):
        async with stack.web(settings) as base, httpx.AsyncClient(base_url=base, timeout=60) as cl:
            auth = {"Authorization": f"Bearer {ops}"}

            async def job(path: str, body: Any) -> None:
                r = await cl.post(path, json=body, headers=auth)
                assert r.status_code == 202, r.text
                texts.append(r.text)
                events = await _sse(cl, r.json()["events"], auth)
                assert events[-1]["event"] == "done", events[-1]
                texts.append(json.dumps(events))

            await job(f"/api/hosts/{alias}/probe", {})
            await job(f"/api/hosts/{alias}/download", {"args": {"repo": "org/gated"}})
            await job("/api/nim/install", {
                "image": "nvcr.io/nim/meta/llama-3.1-8b-instruct:1.3.3", "host": alias,
                "container": f"nim-{unique}", "port": 18555,
            })  # fmt: skip
            signer_auth = {"Authorization": f"Bearer {signer_token}"}
            body = {"rel_path": "projects/ns-a/x.bin", "op": {"kind": "single_put"}}
            r = await cl.post("/api/v1/blob/sign", headers=signer_auth, json=body)
            assert r.status_code == 200, r.text
            texts.append(r.text.split('"url"')[0])  # the URL carries a signature, not a secret
            scrub = {"task_id": "t1", "items": [{"id": "1", "text": f"write to {private}"}],
                     "ner": "rules_only"}  # fmt: skip
            app_auth = {"Authorization": f"Bearer {app_token}"}
            r = await cl.post("/scrub", json=scrub, headers=app_auth)
            assert r.status_code == 200, r.text
            texts.append(r.text)
            lock = await cl.post("/api/swap/lock", json={"holder": "scan"}, headers=auth)
            lock_token = lock.json()["token"]
            r = await cl.post(f"/api/hosts/{alias}/stop", headers=auth)  # no token: 423
            assert r.status_code == 423
            texts.append(r.text)
            texts.append((await cl.request("DELETE", "/api/swap/lock",
                                           headers={**auth, "X-Lock-Token": lock_token})).text)
            # errors: no token, another's token, a bad body, an unknown job
            for bad in (
                cl.get("/api/jobs"), cl.get("/api/jobs", headers={"Authorization": "Bearer x"}),
                cl.post("/api/swap", content=b"{nope", headers=auth),
                cl.get("/api/jobs/nope", headers=auth),
                cl.post("/scrub", json={"items": 3}, headers=app_auth),
            ):  # fmt: skip
                texts.append((await bad).text)
            for page in PAGES:
                r = await cl.get(page, headers={**auth, "accept": "text/html"})
                assert r.status_code == 200, (page, r.status_code)
                texts.append(r.text)
        events = await _all_events(bus)
        records = [msgspec.to_builtins(j) for j in await bus.list_jobs()]
    texts += [json.dumps(records), caplog.text, (hf_host.sim_dir / "commands.log").read_text()]
    assert len(events) > 20 and len(records) >= 3
    texts += [e.decode(errors="replace") for e in events]
    found = {
        name: [i for i, t in enumerate(texts) if value in t]
        for name, value in {
            "S3 secret": s3_store.secret_key, "HF token": hf_token, "NGC key": ngc_key,
            "API token": ops, "inference token": app_token, "signer token": signer_token,
            "webhook secret": hook_secret, "redaction key": redaction_key,
            "lock token": lock_token, "redacted value": private,
        }.items()
    }  # fmt: skip
    assert not any(found.values()), {k: v for k, v in found.items() if v}


async def _sse(client: httpx.AsyncClient, url: str, headers: dict[str, str]) -> list[Any]:
    out = []
    async with client.stream("GET", url, headers=headers) as resp:
        name = None
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                out.append({"event": name, "data": json.loads(line[6:])})
                if name in c.FINAL_KINDS:
                    break
    return out


async def _all_events(bus: Any) -> list[bytes]:
    """Everything SPARK_EVT holds, from the first message."""
    sub = await bus.js.subscribe(c.EVT_WILDCARD, ordered_consumer=True)
    out = []
    try:
        while True:
            out.append((await sub.next_msg(timeout=1.0)).data)
    except TimeoutError:
        pass
    finally:
        await sub.unsubscribe()
    return out
