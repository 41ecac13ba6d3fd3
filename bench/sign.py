"""Blob-signer benchmark: 10,000 part URLs signed directly vs a botocore
``generate_presigned_url`` loop (ratio; target at least 30x), then ``POST /api/v1/blob/sign``
for 10,000 parts end to end through NATS, with the web front and the signer worker as separate
``spark-control`` processes, the store's create_multipart_upload included (p50 over 20 calls;
target 60 ms; the front asks for the compact answer and expands it). Then the same signing as a
plain bus client, full and compact, to show what HTTP adds. Real NATS and SeaweedFS. Not a
test: it prints figures.

    .venv/bin/python bench/sign.py [--parts 10000] [--calls 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aioboto3
import aiohttp
import botocore.session
import httpx
import msgspec
from botocore.config import Config

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app import contracts as c
from app.bus import connect
from app.config import HostConfig, Settings
from app.signer import chunks, compact
from app.signer.sigv4 import Credentials, Presigner
from tests import stack
from tests.servers import NatsServer, SeaweedS3, free_port

MIB = 2**20


def direct_vs_botocore(parts: int) -> None:
    creds = Credentials("AKIDEXAMPLE", "secret/example+key")
    ours = Presigner(creds, "us-east-1", "http://127.0.0.1:8333")
    client = botocore.session.get_session().create_client(
        "s3", region_name="us-east-1", endpoint_url="http://127.0.0.1:8333",
        aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )  # fmt: skip
    direct = []
    for _ in range(5):
        t0 = time.perf_counter()
        ours.part_urls("bucket", "projects/ns/model.bin", "upload-id", parts, 604_800)
        direct.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    for n in range(1, parts + 1):
        client.generate_presigned_url(
            "upload_part",
            Params={"Bucket": "bucket", "Key": "projects/ns/model.bin", "UploadId": "upload-id",
                    "PartNumber": n},
            ExpiresIn=604_800,
        )  # fmt: skip
    boto = time.perf_counter() - t0
    best = min(direct)
    print(f"signing {parts} part URLs")
    print(
        f"  direct SigV4        {best * 1e3:8.1f} ms   {best / parts * 1e6:6.2f} µs/URL  best of 5"
    )
    print(f"  botocore loop       {boto * 1e3:8.1f} ms   {boto / parts * 1e6:6.2f} µs/URL")
    print(f"  ratio               {boto / best:8.1f} x    (target: at least 30x)")


async def end_to_end(root: Path, parts: int, calls: int) -> None:
    nats = NatsServer(root / "nats").start()
    store = SeaweedS3(root / "s3").start()
    procs = []
    try:
        session = aioboto3.Session(
            aws_access_key_id=store.access_key,
            aws_secret_access_key=store.secret_key,
            region_name=store.region,
        )
        cfg = Config(s3={"addressing_style": "path"})
        async with session.client("s3", endpoint_url=store.endpoint_url, config=cfg) as s3:
            await s3.create_bucket(Bucket="bench")
        local = HostConfig(alias="local", address="localhost", transport="local")
        settings = stack.make_settings(
            root / "data", nats.url, [local], bind_port=free_port(),
            s3_endpoint_url=store.endpoint_url, s3_region=store.region, s3_bucket="bench",
            s3_access_key_id=store.access_key, s3_secret_access_key=store.secret_key,
            signer_tokens={"bench-token": "bench"},
        )  # fmt: skip
        config = stack.write_config(settings, root / "settings.yaml")
        procs = [stack.part_process(config, "web"), stack.worker_process(config, "signer")]
        base = f"http://127.0.0.1:{settings.bind_port}"
        await stack.wait_for(stack.front_ready(base), timeout=60)
        op = {"kind": "multipart_put", "parts": parts, "part_size_bytes": 64 * MIB}
        body = {"rel_path": "projects/bench/model.bin", "op": op}
        headers = {"Authorization": "Bearer bench-token"}
        # the client is aiohttp, as in bench/command_path.py: httpx spends several ms of CPU
        # of its own reading a 4.2 MB body, on the same two cores as the processes measured
        # (its figure is printed too, for comparison)
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(base, timeout=timeout) as client:
            ms, size = [], 0
            for i in range(calls + 3):
                t0 = time.perf_counter()
                async with client.post("/api/v1/blob/sign", json=body, headers=headers) as r:
                    r.raise_for_status()
                    answer = await r.read()  # the whole body is in the timing
                elapsed = (time.perf_counter() - t0) * 1e3
                size = len(answer)
                if i >= 3:  # warm-up
                    ms.append(elapsed)
        slow = []
        async with httpx.AsyncClient(base_url=base, timeout=60) as other:
            for i in range(calls + 3):
                t0 = time.perf_counter()
                resp = await other.post("/api/v1/blob/sign", json=body, headers=headers)
                resp.raise_for_status()
                if i >= 3:
                    slow.append((time.perf_counter() - t0) * 1e3)
        print(f"POST /api/v1/blob/sign, {parts} parts, web and signer processes, through NATS")
        print(
            f"  p50 {statistics.median(ms):7.1f} ms   min {min(ms):7.1f} ms"
            f"   max {max(ms):7.1f} ms   (n={len(ms)}, answer {size / 1e6:.1f} MB;"
            " target p50 ≤ 60 ms)"
        )
        print(f"  the same read by an httpx client: p50 {statistics.median(slow):7.1f} ms")
        await on_the_bus(settings, msgspec.json.encode(body), calls)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=10)
        store.close()
        nats.close()


async def on_the_bus(settings: Settings, body: bytes, calls: int) -> None:
    """Where the time goes: the same signing as a plain bus client, full (chunked) and compact
    (what the web front asks for; expanded here as the front does)."""
    bus = await connect(settings, name="bench-sign")
    try:
        print("  the same on the bus, without HTTP (p50):", end="")
        for label, headers in (("full", None), ("compact", {c.ANSWER_HEADER: c.ANSWER_COMPACT})):
            ms, size = [], 0
            for i in range(calls + 3):
                t0 = time.perf_counter()
                async with chunks.request(bus.nc, c.blob_sign("bench"), body, 60, headers) as r:
                    data = await r.body()
                if r.compact:
                    compact.expand(data)
                if i >= 3:
                    ms.append((time.perf_counter() - t0) * 1e3)
                    size = len(data)
            print(f"  {label} {statistics.median(ms):.1f} ms ({size / 1e6:.2f} MB)", end="")
        print()
    finally:
        await bus.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--parts", type=int, default=10_000)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    direct_vs_botocore(args.parts)
    with tempfile.TemporaryDirectory(prefix="bench-sign-") as tmp:
        asyncio.run(end_to_end(Path(tmp), args.parts, args.calls))


if __name__ == "__main__":
    main()
