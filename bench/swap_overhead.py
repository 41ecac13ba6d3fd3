"""Swap overhead: POST /api/swap → the swap's final event at an SSE client, minus the simulated
engine's own start delay, alternating two models on one simulated host (real NATS, OpenSSH
sshd, executor and web front as processes). Prints p50 and max. Not a test.

    .venv/bin/python bench/swap_overhead.py [--swaps 20] [--start-delay 1.0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import stack
from tests.servers import SSHD, NatsServer, SshdHost, free_port


async def one_swap(client: httpx.AsyncClient, model: str) -> float:
    t0 = time.perf_counter()
    r = await client.post("/api/swap", json={"model": model})
    r.raise_for_status()
    async with client.stream("GET", r.json()["stream"]) as resp:
        kind = ""
        async for line in resp.aiter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind in ("done", "failed"):
                if kind == "failed":
                    raise RuntimeError(json.loads(line[6:]).get("message"))
                break
    return time.perf_counter() - t0


async def main(swaps: int, start_delay: float) -> None:
    if not SSHD.exists():
        sys.exit("bench needs OpenSSH sshd (Debian package openssh-server)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        nats = NatsServer(root / "nats").start()
        host = SshdHost(root / "ssh").start()
        host.sim_config(start_delay_s=start_delay, bind_host="127.0.0.1")
        models = {
            name: {"repo": f"org/{name}", "port": free_port(), "weight_bytes": 2**30,
                   "max_model_len": 4096, "gpu_memory_utilization": 0.3}
            for name in ("model-a", "model-b")
        }  # fmt: skip
        overrides = root / "models.overrides.yaml"
        overrides.write_text(yaml.safe_dump({"models": models}))
        os.environ["MODELS_OVERRIDES"] = str(overrides)
        port = free_port()
        settings = stack.make_settings(
            root / "data", nats.url, [stack.ssh_host_config("spark1", host)],
            known_hosts=str(host.known_hosts_path), bind_port=port, log_level="warning",
        )  # fmt: skip
        config = stack.write_config(settings, root / "settings.yaml")
        procs = [stack.worker_process(config, "ssh"), stack.part_process(config, "web")]
        base = f"http://127.0.0.1:{port}"
        try:
            await stack.wait_for(stack.front_ready(base), timeout=60)
            async with httpx.AsyncClient(base_url=base, timeout=120) as client:
                await one_swap(client, "model-a")  # warm-up: the first SSH connection
                overheads = [
                    await one_swap(client, "model-b" if i % 2 == 0 else "model-a") - start_delay
                    for i in range(swaps)
                ]
        finally:
            for p in procs:
                p.terminate()
                p.wait(timeout=15)
            host.stop()
            nats.stop()
    ms = [o * 1000 for o in overheads]
    print(f"swap overhead, {swaps} swaps, simulated engine start {start_delay:g} s, OpenSSH sshd")
    print(f"  control-plane overhead   p50 {statistics.median(ms):8.1f} ms   max {max(ms):8.1f} ms")
    print("  (target: p50 <= 1000 ms)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--start-delay", type=float, default=1.0)
    args = ap.parse_args()
    asyncio.run(main(args.swaps, args.start_delay))
