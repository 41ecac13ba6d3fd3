"""``GET /metrics``: the fleet in Prometheus text format (version 0.0.4), built from what the bus
already holds (host and endpoint state, job records, the models placed) plus the proxy's own
figures (app/proxy/metrics.py) and the blob signer's ``$SRV.STATS``.

Label values are only names the configuration defines (host aliases, endpoint and catalog
names, actions, states); a model name a client asked the proxy for is shown only when the fleet
knows it, else counted under ``other``. No secret and no user text ever reaches a label.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import Any

import nats.errors

from app import contracts as c
from app import health
from app.bus import Bus
from app.config import Settings

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
ENDPOINT_STATES = ("up", "idle", "down", "wedged", "failed", "disabled", "unknown")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Writer:
    """Families in order: ``# HELP``, ``# TYPE``, then the samples."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]
               ) -> None:  # fmt: skip
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            self.lines.append(
                f"{name}{{{inner}}} {_num(value)}" if inner else f"{name} {_num(value)}"
            )

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


async def _stats(bus: Bus, service: str, window_s: float) -> list[dict[str, Any]]:
    """Every replica's ``$SRV.STATS.<service>`` answer within the window."""
    if not bus.nc.is_connected:
        return []
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    found: list[dict[str, Any]] = []
    try:
        await bus.nc.publish(f"{c.SRV_STATS}.{service}", b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window_s
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            with contextlib.suppress(ValueError):
                got = json.loads(msg.data)
                if isinstance(got, dict):
                    found.append(got)
    finally:
        await sub.unsubscribe()
    return found


async def render(bus: Bus, settings: Settings, env: Mapping[str, str], proxy: Any = None) -> str:
    """The whole exposition."""
    w = Writer()
    s = settings
    w.family("spark_bus_connected", "gauge", "1 when the web front is connected to NATS",
             [({}, 1.0 if bus.nc.is_connected else 0.0)])  # fmt: skip
    hosts = {a: await bus.get_host_state(a) for a in s.aliases}
    _hosts(w, hosts)
    await _models(w, bus, s)
    await _endpoints(w, bus, s, env)
    await _jobs(w, bus)
    if proxy is not None:
        _proxy(w, proxy)
    stats = await _stats(bus, c.SIGNER_SERVICE, s.discovery_window_s)
    req = err = secs = 0.0
    for reply in stats:
        for ep in reply.get("endpoints") or []:
            req += float(ep.get("num_requests") or 0)
            err += float(ep.get("num_errors") or 0)
            secs += float(ep.get("processing_time") or 0) / 1e9
    w.family("spark_signer_replicas", "gauge", "blob signer replicas that answered $SRV.STATS",
             [({}, float(len(stats)))])  # fmt: skip
    w.family("spark_signer_requests_total", "counter", "sign requests (all replicas, since start)",
             [({}, req)])  # fmt: skip
    w.family("spark_signer_errors_total", "counter", "sign requests refused or failed",
             [({}, err)])  # fmt: skip
    w.family("spark_signer_processing_seconds_total", "counter", "time spent signing",
             [({}, secs)])  # fmt: skip
    return w.text()


def _hosts(w: Writer, hosts: Mapping[str, c.HostState | None]) -> None:
    def per(get: Callable[[c.ProbeResult], float]) -> list[tuple[dict[str, str], float]]:
        return [({"host": a}, float(get(st.probe))) for a, st in hosts.items()
                if st is not None and st.probe is not None]  # fmt: skip

    w.family("spark_host_up", "gauge", "1 up, 0 down (hosts never checked are absent)",
             [({"host": a}, 1.0 if st.up else 0.0) for a, st in hosts.items() if st])  # fmt: skip
    w.family("spark_host_checked_timestamp_seconds", "gauge", "when the host state was last set",
             [({"host": a}, st.checked_at) for a, st in hosts.items() if st])  # fmt: skip
    w.family("spark_host_memory_total_bytes", "gauge", "MemTotal (unified memory on a Spark)",
             per(lambda p: p.mem_total_bytes))  # fmt: skip
    w.family("spark_host_memory_available_bytes", "gauge", "MemAvailable",
             per(lambda p: p.mem_available_bytes))  # fmt: skip
    w.family("spark_host_load1", "gauge", "1-minute load average", per(lambda p: p.load[0]))
    w.family("spark_host_uptime_seconds", "gauge", "seconds since boot", per(lambda p: p.uptime_s))
    gpu: list[tuple[dict[str, str], float]] = []
    temp: list[tuple[dict[str, str], float]] = []
    disk_free: list[tuple[dict[str, str], float]] = []
    disk_total: list[tuple[dict[str, str], float]] = []
    for a, st in hosts.items():
        if st is None or st.probe is None:
            continue
        for i, g in enumerate(st.probe.gpus):
            if g.utilization_pct is not None:
                gpu.append(({"host": a, "gpu": str(i)}, g.utilization_pct / 100))
            if g.temperature_c is not None:
                temp.append(({"host": a, "gpu": str(i)}, g.temperature_c))
        for i, d in enumerate(st.probe.disks):  # 0: $HOME, 1: the HF cache (when another fs)
            disk_free.append(({"host": a, "disk": str(i)}, float(d.free_bytes)))
            disk_total.append(({"host": a, "disk": str(i)}, float(d.total_bytes)))
    w.family("spark_host_gpu_utilization_ratio", "gauge", "GPU utilisation 0..1 (nvidia-smi)", gpu)
    w.family("spark_host_gpu_temperature_celsius", "gauge", "GPU temperature", temp)
    w.family("spark_host_disk_free_bytes", "gauge", "free bytes (disk 0 home, 1 HF cache)",
             disk_free)  # fmt: skip
    w.family("spark_host_disk_total_bytes", "gauge", "size in bytes", disk_total)


async def _models(w: Writer, bus: Bus, s: Settings) -> None:
    samples = []
    for a in s.aliases:
        st = await bus.get_model_state(a)
        if st is not None and st.model:
            samples.append(({"host": a, "model": st.model}, 1.0))
    w.family("spark_model_loaded", "gauge", "1 for the model the last swap left on a host",
             samples)  # fmt: skip


async def _endpoints(w: Writer, bus: Bus, s: Settings, env: Mapping[str, str]) -> None:
    found = await health.declared(bus, s, env)
    got = await asyncio.gather(*(health.get_endpoint(bus, d.name) for d in found))
    up, state, deep, restarts = [], [], [], []
    for d, h in zip(found, got, strict=True):
        current = "disabled" if d.disabled else (h.state if h else "unknown")
        labels = {"endpoint": d.name, "kind": d.kind, "host": d.host}
        up.append((labels, 1.0 if current in ("up", "idle") else 0.0))
        for name in ENDPOINT_STATES:
            state.append(({"endpoint": d.name, "state": name}, 1.0 if name == current else 0.0))
        if h is not None and h.deep is not None:
            deep.append(({"endpoint": d.name}, h.deep.ms / 1000))
        if h is not None:
            window = [t for t in h.restarts if c.now() - t < s.health_restart_window_s]
            restarts.append(({"endpoint": d.name}, float(len(window))))
    w.family("spark_endpoint_up", "gauge", "1 when the endpoint answers (up or idle)", up)
    w.family("spark_endpoint_state", "gauge", "1 for the endpoint's current state", state)
    w.family("spark_endpoint_deep_probe_seconds", "gauge", "duration of the last deep probe", deep)
    w.family("spark_endpoint_restarts", "gauge", "automatic restarts in the restart window",
             restarts)  # fmt: skip


async def _jobs(w: Writer, bus: Bus) -> None:
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for job in await bus.list_jobs(limit=1_000_000):
        if job.action in c.ACTIONS:
            counts[(job.action, job.state)] += 1
    w.family("spark_jobs", "gauge", "job records kept (event_max_age_days) by action and state",
             [({"action": a, "state": st}, float(n))
              for (a, st), n in sorted(counts.items())])  # fmt: skip


def _proxy(w: Writer, proxy: Any) -> None:
    """Per-model figures of the /v1 proxy; unknown names (client text) fold into ``other``."""
    router = getattr(proxy, "router", None)
    merged: dict[str, dict[str, float]] = {}
    ttfb: dict[str, tuple[float | None, float | None]] = {}
    for name, st in proxy.metrics.snapshot().items():
        known = name in ("stt", "tts", "embeddings") or (
            router is not None and router.resolve(name) is not None
        )
        label = name if known else "other"
        m = merged.setdefault(label, defaultdict(float))
        for field in ("requests", "errors", "in_flight", "completion_tokens", "swaps"):
            m[field] += float(getattr(st, field) or 0)
        if known:
            ttfb[label] = (st.ttfb_ms_p50, st.ttfb_ms_p99)
    rows = sorted(merged.items())

    def fam(name: str, kind: str, help_: str, field: str) -> None:
        w.family(name, kind, help_, [({"model": k}, m[field]) for k, m in rows])

    fam("spark_proxy_requests_total", "counter", "requests through /v1 since start", "requests")
    fam("spark_proxy_errors_total", "counter", "failed or refused requests", "errors")
    fam("spark_proxy_in_flight", "gauge", "requests being answered now", "in_flight")
    fam("spark_proxy_completion_tokens_total", "counter", "tokens generated", "completion_tokens")
    fam("spark_proxy_swaps_total", "counter", "on-demand swaps", "swaps")
    samples = []
    for k, (p50, p99) in sorted(ttfb.items()):
        if p50 is not None:
            samples.append(({"model": k, "quantile": "0.5"}, p50 / 1000))
        if p99 is not None:
            samples.append(({"model": k, "quantile": "0.99"}, p99 / 1000))
    w.family("spark_proxy_ttfb_seconds", "gauge", "time to first byte (last 1000 requests)",
             samples)  # fmt: skip
