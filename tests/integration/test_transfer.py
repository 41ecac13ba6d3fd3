"""Weights between hosts without credentials on them: ``push`` from one host into SeaweedFS
through presigned URLs (curl on the host), ``pull`` onto another host with hashes verified; a
push interrupted mid-file resumes, skipping the parts already uploaded; a tampered object is
refused by the pull and leaves no partial file."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import contracts as c
from app import jobs
from app.bus import Bus
from app.config import HostConfig, Settings
from tests import stack
from tests.integration.test_blob_signer import admin_s3, bucket  # noqa: F401 (fixture)
from tests.servers import SeaweedS3

MIB = 2**20
PREFIX = "projects/ns-a/models/m1"
CURL_WRAPPER = """#!/bin/bash
# counts part uploads (curl -D ...); with $DIR/fail present, refuses from the Nth on
dir=$(dirname -- "$0")
case " $* " in *" -D "*)
  n=$(( $(cat "$dir/count" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$dir/count"
  if [ -e "$dir/fail" ] && [ "$n" -ge "$(cat "$dir/fail")" ]; then cat >/dev/null; exit 22; fi;;
esac
exec /usr/bin/curl "$@"
"""


def make_model(root: Path) -> dict[str, bytes]:
    files = {
        "config.json": b'{"architectures": ["Toy"]}',
        "empty.txt": b"",
        "model-00001-of-00001.safetensors": os.urandom(12 * MIB + 321),
        "sub dir/tokenizer.json": os.urandom(70_000),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return files


@pytest.fixture
async def env(
    tmp_path: Path,
    nats_server: Any,
    s3_store: SeaweedS3,
    bucket: str,  # noqa: F811
) -> AsyncIterator[tuple[Bus, Settings]]:
    hosts = [HostConfig(alias=a, address="localhost", transport="local") for a in ("ha", "hb")]
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, hosts, command_timeout_s=120.0,
        s3_endpoint_url=s3_store.endpoint_url, s3_region=s3_store.region, s3_bucket=bucket,
        s3_access_key_id=s3_store.access_key, s3_secret_access_key=s3_store.secret_key,
    )  # fmt: skip
    async with stack.signer(settings), stack.executor(settings) as bus:
        yield bus, settings


async def run(
    bus: Bus, settings: Settings, host: str, action: str, args: dict[str, Any]
) -> tuple[list[c.Event], c.JobRecord]:
    job, _ = await jobs.submit(bus, settings, host, action, args)
    sub = await bus.js.subscribe(c.evt_job_filter(job.id), ordered_consumer=True)
    events: list[c.Event] = []
    try:
        while not events or events[-1].kind not in c.FINAL_KINDS:
            events.append(c.decode_event((await sub.next_msg(timeout=120)).data))
    finally:
        await sub.unsubscribe()
    record = await jobs.get(bus, job.id)
    assert record is not None
    return events, record


def push_args(src: Path, **kw: Any) -> dict[str, Any]:
    return {"path": str(src), "rel_path": PREFIX, "namespace": "ns-a",
            "part_size_bytes": 5 * MIB, **kw}  # fmt: skip


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


async def test_push_then_pull_onto_another_host(env: tuple[Bus, Settings], tmp_path: Path) -> None:
    bus, settings = env
    src, dst = tmp_path / "ha" / "model", tmp_path / "hb" / "model"
    src.mkdir(parents=True)
    files = make_model(src)
    events, job = await run(bus, settings, "ha", "push", push_args(src, parallel=3))
    assert job.state == "succeeded", (job.error, job.code)
    assert job.result["files"] == 4 and job.result["bytes"] == sum(map(len, files.values()))
    progress = [e.data for e in events if e.kind == "progress" and isinstance(e.data, dict)]
    assert progress[-1]["bytes"] == progress[-1]["total"] == job.result["bytes"]
    assert progress[-1]["files_done"] == 4 and progress[-1]["rate_bps"]
    assert all({"bytes", "total", "rate_bps", "eta_s"} <= set(p) for p in progress)

    pull = {"path": str(dst), "rel_path": PREFIX, "namespace": "ns-a"}
    events, job = await run(bus, settings, "hb", "pull", pull)
    assert job.state == "succeeded", (job.error, job.code)
    assert tree(dst) == files
    assert job.result["source_host"] == "ha" and job.result["bytes"] == sum(
        map(len, files.values())
    )
    assert job.result["skipped_bytes"] == 0
    # nothing on the bus or in the record carries a URL or the secret
    text = repr([e for e in events]) + repr(job)
    assert "X-Amz-Signature" not in text and settings.s3_secret_access_key not in text
    # pulled again: what is there with the right hash is skipped; a damaged file is replaced
    (dst / "config.json").write_bytes(b"changed locally")
    _, job = await run(bus, settings, "hb", "pull", pull)
    assert job.state == "succeeded", (job.error, job.code)
    assert job.result["skipped_bytes"] == job.result["bytes"] - len(files["config.json"])
    assert tree(dst) == files


async def test_interrupted_push_resumes_skipping_uploaded_parts(
    env: tuple[Bus, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, s3_store: SeaweedS3
) -> None:
    bus, settings = env
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "curl").write_text(CURL_WRAPPER)
    (shim / "curl").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    src = tmp_path / "ha" / "model2"
    src.mkdir(parents=True)
    files = make_model(src)
    # part uploads in order (parallel 1): config.json 1, the model's parts 1, 2, 3, tokenizer 1
    (shim / "fail").write_text("4")
    _, job = await run(bus, settings, "ha", "push", push_args(src, parallel=1))
    assert job.state == "failed" and job.code == "PUSH_FAILED", job.error
    (shim / "fail").unlink()
    (shim / "count").write_text("0")
    _, job = await run(bus, settings, "ha", "push", push_args(src, parallel=1))
    assert job.state == "succeeded", (job.error, job.code)
    assert job.result["skipped_bytes"] == 10 * MIB  # the model's parts 1 and 2
    assert (shim / "count").read_text().strip() == "3"  # config.json, model part 3, tokenizer
    async with admin_s3(s3_store) as s3:
        obj = await s3.get_object(Bucket=settings.s3_bucket,
                                  Key=f"{PREFIX}/model-00001-of-00001.safetensors")  # fmt: skip
        body = await obj["Body"].read()
    name = "model-00001-of-00001.safetensors"
    assert hashlib.sha256(body).digest() == hashlib.sha256(files[name]).digest()


async def test_pull_refuses_a_tampered_object_and_leaves_no_partial(
    env: tuple[Bus, Settings], tmp_path: Path, s3_store: SeaweedS3
) -> None:
    bus, settings = env
    src, dst = tmp_path / "ha" / "model3", tmp_path / "hb" / "model3"
    src.mkdir(parents=True)
    make_model(src)
    args = push_args(src)
    args["rel_path"] = PREFIX + "-t"
    _, job = await run(bus, settings, "ha", "push", args)
    assert job.state == "succeeded", job.error
    async with admin_s3(s3_store) as s3:
        await s3.put_object(Bucket=settings.s3_bucket, Key=f"{PREFIX}-t/sub dir/tokenizer.json",
                            Body=b"not what the manifest says")  # fmt: skip
    pull = {"path": str(dst), "rel_path": PREFIX + "-t", "namespace": "ns-a"}
    _, job = await run(bus, settings, "hb", "pull", pull)
    assert job.state == "failed" and job.code == "PULL_HASH_MISMATCH", job.error
    assert not list(dst.rglob("*.spark-partial"))
    assert not (dst / "sub dir" / "tokenizer.json").exists()


async def test_push_and_pull_refuse_bad_values(env: tuple[Bus, Settings], tmp_path: Path) -> None:
    bus, settings = env
    bad = [
        ("push", {"path": "/tmp/x;rm -rf /", "rel_path": PREFIX, "namespace": "ns-a"},
         "UNSAFE_VALUE"),
        ("push", {"path": str(tmp_path), "rel_path": "projects/ns-b/x", "namespace": "ns-a"},
         "OUTSIDE_NAMESPACE"),
        ("push", {"path": str(tmp_path), "rel_path": PREFIX, "namespace": "a.b"}, "BAD_ARGS"),
        ("pull", {"path": str(tmp_path / "d"), "rel_path": PREFIX + "/../x", "namespace": "ns-a"},
         "BAD_PATH"),
        ("pull", {"path": str(tmp_path / "d"), "rel_path": "projects/ns-a/no", "namespace": "ns-a"},
         "PULL_NOT_FOUND"),
    ]  # fmt: skip
    for action, args, code in bad:
        _, job = await run(bus, settings, "ha", action, args)
        assert (job.state, job.code) == ("failed", code), (action, args, job.error)


async def test_cancel_stops_the_uploads_on_the_host(
    env: tuple[Bus, Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, settings = env
    shim = tmp_path / "slowshim"
    shim.mkdir()
    (shim / "curl").write_text(
        '#!/bin/bash\ncase " $* " in *" -D "*) sleep 59.7731;; esac\nexec /usr/bin/curl "$@"\n'
    )
    (shim / "curl").chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    src = tmp_path / "ha" / "model4"
    src.mkdir(parents=True)
    make_model(src)
    job, _ = await jobs.submit(bus, settings, "ha", "push", push_args(src, parallel=2))

    def sleepers() -> list[int]:
        found = []
        for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                argv = cmdline.read_bytes().split(b"\0")
            except OSError:
                continue
            if argv[:2] == [b"sleep", b"59.7731"]:
                found.append(int(cmdline.parent.name))
        return found

    await stack.wait_for(sleepers, timeout=60)
    record = await jobs.cancel(bus, job.id)
    final = await stack.wait_for(lambda: _final(bus, job.id), timeout=30)
    assert final.state == "cancelled", (record.state, final.error)
    await stack.wait_for(lambda: not sleepers(), timeout=15)


async def _final(bus: Bus, job_id: str) -> c.JobRecord | None:
    job = await jobs.get(bus, job_id)
    return job if job is not None and job.state in c.FINAL_STATES else None


async def test_copy_model_to_host_from_the_dashboard(
    env: tuple[Bus, Settings], tmp_path: Path
) -> None:
    bus, settings = env
    src, dst = tmp_path / "ha" / "weights" / "toy", tmp_path / "hb" / "copied"
    src.mkdir(parents=True)
    files = make_model(src)
    async with stack.web(settings) as base, httpx.AsyncClient(timeout=30) as client:
        page = await client.get(f"{base}/hosts", headers={"accept": "text/html"})
        assert 'hx-post="/transfers/copy"' in page.text
        form = {"src": "ha", "path": str(src), "dst": "hb", "dest": str(dst)}
        r = await client.post(f"{base}/transfers/copy", data=form, headers={"hx-request": "true"})
        assert r.status_code == 200, r.text
        job_id = re.search(r'id="job-([0-9a-f]+)"', r.text)
        assert job_id, r.text
        push = await stack.wait_for(lambda: _final(bus, job_id[1]), timeout=120)
        assert push.state == "succeeded", (push.error, push.code)
        assert push.args["rel_path"] == "projects/fleet/hosts/ha/toy"
        pull = await stack.wait_for(lambda: _final(bus, push.result["pull_job"]), timeout=120)
        assert (pull.host, pull.action, pull.state) == ("hb", "pull", "succeeded"), pull.error
        assert tree(dst) == files
        same = await client.post(f"{base}/transfers/copy", data={**form, "dst": "ha"},
                                 headers={"hx-request": "true"})  # fmt: skip
        assert same.status_code == 400 and "SAME_HOST" in same.text


async def test_push_over_ssh_then_pull_locally(
    tmp_path: Path,
    nats_server: Any,
    s3_store: SeaweedS3,
    bucket: str,  # noqa: F811
    ssh_host: Any,
) -> None:
    """The same through a real SSH host (OpenSSH sshd, or the asyncssh stand-in)."""
    hosts = [stack.ssh_host_config("sa", ssh_host),
             HostConfig(alias="hb", address="localhost", transport="local")]  # fmt: skip
    settings = stack.make_settings(
        tmp_path / "data", nats_server.url, hosts, known_hosts=str(ssh_host.known_hosts_path),
        command_timeout_s=120.0, s3_endpoint_url=s3_store.endpoint_url, s3_region=s3_store.region,
        s3_bucket=bucket, s3_access_key_id=s3_store.access_key,
        s3_secret_access_key=s3_store.secret_key,
    )  # fmt: skip
    src, dst = tmp_path / "sa" / "model", tmp_path / "hb" / "model"
    src.mkdir(parents=True)
    files = make_model(src)
    async with stack.signer(settings), stack.executor(settings) as bus:
        args = push_args(src, parallel=2)
        args["rel_path"] = PREFIX + "-ssh"
        _, job = await run(bus, settings, "sa", "push", args)
        assert job.state == "succeeded", (job.error, job.code)
        pull = {"path": str(dst), "rel_path": PREFIX + "-ssh", "namespace": "ns-a"}
        _, job = await run(bus, settings, "hb", "pull", pull)
        assert job.state == "succeeded", (job.error, job.code)
    assert tree(dst) == files
