"""Scale-out (issue 8): a 3-node NATS cluster on loopback (streams and buckets with 3 replicas),
50 simulated hosts (one in-process asyncssh server, 50 aliases, each its own SSH connection per
replica), 3 executor replicas as processes. Queues ``--per-host`` probes on every host at once,
SIGKILLs one replica a third of the way through, then checks every command ran exactly once
(one final event, one succeeded record) and that each host's commands ran in the order they
were queued. Prints commands/s and the checks. Not a test.

    .venv/bin/python bench/scale_out.py [--hosts 50] [--per-host 10] [--replicas 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nats

from app import aio
from app import contracts as c
from app.bus import connect
from app.config import HostConfig
from tests import stack
from tests.servers import AsyncsshHost, find_binary, free_port


def start_cluster(root: Path, size: int = 3) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    client = [free_port() for _ in range(size)]
    route = [free_port() for _ in range(size)]
    routes = ",".join(f"nats://127.0.0.1:{p}" for p in route)
    procs = []
    for i in range(size):
        log = (root / f"n{i}.log").open("wb")
        procs.append(subprocess.Popen(
            [find_binary("nats-server"), "-a", "127.0.0.1", "-p", str(client[i]), "-js",
             "-sd", str(root / f"n{i}"), "-n", f"n{i}", "--cluster_name", "bench",
             "--cluster", f"nats://127.0.0.1:{route[i]}", "--routes", routes],
            stdout=log, stderr=subprocess.STDOUT,
        ))  # fmt: skip
    return procs, [f"nats://127.0.0.1:{p}" for p in client]


async def wait_jetstream(urls: list[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            nc = await nats.connect(urls, connect_timeout=1, allow_reconnect=False)
            try:
                await nc.jetstream().account_info()
                return
            finally:
                await nc.close()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def main(n_hosts: int, per_host: int, n_replicas: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cluster, urls = start_cluster(root)
        ssh = AsyncsshHost(root / "ssh").start()
        replicas: list[subprocess.Popen[bytes]] = []
        try:
            await wait_jetstream(urls)
            hosts = [
                HostConfig(alias=f"h{i:02d}", address=ssh.host, port=ssh.port, user=ssh.user,
                           key_path=str(ssh.client_key_path))
                for i in range(n_hosts)
            ]  # fmt: skip
            settings = stack.make_settings(
                root / "data", ",".join(urls), hosts, known_hosts=str(ssh.known_hosts_path),
                stream_replicas=3, ack_wait_s=3.0, log_level="warning",
            )  # fmt: skip
            config = stack.write_config(settings, root / "settings.yaml")
            bus = await connect(settings, name="bench")
            for i in range(n_replicas):
                replicas.append(stack.worker_process(config, "ssh", name=f"rep-{i}"))
            for alias in (h.alias for h in hosts):  # every replica bound every host
                await stack.wait_for(
                    lambda a=alias: _consumer_bound(bus, a, n_replicas), timeout=120
                )
            order: dict[str, list[str]] = {h.alias: [] for h in hosts}
            finals: dict[str, int] = {}
            done, third = asyncio.Event(), asyncio.Event()
            total = n_hosts * per_host

            async def on_final(msg: nats.aio.msg.Msg) -> None:
                ev = c.decode_event(msg.data)
                if ev.kind in c.FINAL_KINDS and ev.job_id:
                    finals[ev.job_id] = finals.get(ev.job_id, 0) + 1
                    if len(finals) >= total // 3:
                        third.set()
                    if len(finals) >= total:
                        done.set()

            sub = await bus.nc.subscribe("spark.evt.job.*.*", cb=on_final)
            t0 = time.perf_counter()
            sends = []
            for k in range(per_host):
                for h in hosts:
                    job = f"{h.alias}-{k:03d}"
                    order[h.alias].append(job)
                    sends.append(bus.publish_command(h.alias, "probe", c.Command(job_id=job), job))
            await asyncio.gather(*sends)
            killed = replicas[0]
            await asyncio.wait_for(third.wait(), timeout=600)
            killed.send_signal(signal.SIGKILL)
            t_kill = time.perf_counter() - t0
            await asyncio.wait_for(done.wait(), timeout=600)
            took = time.perf_counter() - t0
            await asyncio.sleep(2 * settings.ack_wait_s)  # a late duplicate would show by now
            await sub.unsubscribe()
            records = {j: (await bus.get_job(j)) for js in order.values() for j in js}
            await bus.close()
        finally:
            for p in replicas:
                if p.poll() is None:
                    p.terminate()
                    p.wait(15)
            ssh.close()
            for p in cluster:
                p.terminate()
                p.wait(15)
    lost = [j for j, r in records.items() if r is None or r[0].state != "succeeded"]
    doubled = [j for j, n in finals.items() if n != 1]
    taken_over = [j for j, r in records.items() if r and r[0].attempts > 1]
    out_of_order = []
    for jobs in order.values():
        recs = [records[j][0] for j in jobs if records[j]]  # type: ignore[index]
        for a, b in itertools.pairwise(recs):
            if (a.finished_at or 0) > (b.started_at or 0):
                out_of_order.append((a.id, b.id))
    print(f"scale-out: 3-node NATS cluster (R3), {n_hosts} hosts, {n_replicas} executor replicas,"
          f" {total} probes")  # fmt: skip
    print(f"  all done in {took:.1f} s: {total / took:.0f} commands/s "
          f"(replica rep-0 SIGKILLed at {t_kill:.1f} s)")
    print(f"  lost or failed: {len(lost)}   final event not exactly once: {len(doubled)}   "
          f"per-host order violations: {len(out_of_order)}   taken over after the kill: "
          f"{len(taken_over)}")
    for name, bad in (("lost", lost), ("doubled", doubled), ("order", out_of_order)):
        if bad:
            print(f"  {name}: {bad[:5]}")
    os._exit(1 if lost or doubled or out_of_order else 0)


async def _consumer_bound(bus: object, alias: str, replicas: int) -> bool:
    try:
        info = await bus.js.consumer_info(c.CMD_STREAM, c.host_consumer(alias))  # type: ignore[attr-defined]
        return bool(info.num_waiting >= replicas)
    except Exception:
        return False


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hosts", type=int, default=50)
    p.add_argument("--per-host", type=int, default=10)
    p.add_argument("--replicas", type=int, default=3)
    a = p.parse_args()
    aio.run(main(a.hosts, a.per_host, a.replicas))
