"""The read side of health: endpoints, deep health, client reports and the connectivity history.

The health loop (workers/health.py) writes ``spark_state/endpoint.<name>`` and the events; this
module only reads them (and records client reports), so any number of web fronts serve it.
The connectivity history is replayed from SPARK_EVT (transitions and reports only), so it
survives restarts and reaches as far back as the stream keeps events.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from app import contracts as c
from app import services
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest, NotFound, SparkError

MAX_EVENTS = 200_000
"""Most events one history read replays (a guard; a week of transitions is far fewer)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class UnknownEndpoint(NotFound):
    code = "UNKNOWN_SERVICE"


# --- endpoints --------------------------------------------------------------------------------


class Declared(msgspec.Struct, kw_only=True):
    """An endpoint as configuration declares it (before any health is known)."""

    name: str
    kind: str
    host: str
    base_url: str | None
    disabled: bool = False


def _base(settings: Settings, host: str, port: int | None) -> str | None:
    cfg = settings.host(host)
    if cfg is None or not port:
        return None
    address = "127.0.0.1" if cfg.transport == "local" else cfg.address
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{port}"


async def declared(bus: Bus, settings: Settings, env: Mapping[str, str]) -> list[Declared]:
    """Every host's vLLM (``vllm-<host>``) and every service on a configured host."""
    out = []
    for alias in settings.aliases:
        model = await bus.get_model_state(alias)
        port = model.port if model else None
        out.append(Declared(name=c.vllm_endpoint(alias), kind="llm", host=alias,
                            base_url=_base(settings, alias, port)))  # fmt: skip
    with contextlib.suppress(SparkError):
        found = await asyncio.to_thread(services.current, settings, env)
        for name, svc in sorted(found.services.items()):
            if settings.host(svc.host) is not None:
                out.append(Declared(name=name, kind=svc.kind, host=svc.host,
                                    base_url=_base(settings, svc.host, svc.port),
                                    disabled=found.disabled(name)))  # fmt: skip
    return out


async def get_endpoint(bus: Bus, name: str) -> c.EndpointHealth | None:
    try:
        entry = await bus.state.get(c.endpoint_state_key(name))
    except nats.js.errors.KeyNotFoundError:
        return None
    with contextlib.suppress(msgspec.DecodeError):
        return msgspec.json.decode(entry.value or b"", type=c.EndpointHealth)
    return None


def _state(d: Declared, h: c.EndpointHealth | None) -> str:
    return "disabled" if d.disabled else (h.state if h else "unknown")


async def endpoints(bus: Bus, settings: Settings, env: Mapping[str, str]) -> list[dict[str, Any]]:
    """``GET /api/endpoints``: per endpoint base_url, ready, loaded model, disabled, state."""
    found = await declared(bus, settings, env)
    healths = await asyncio.gather(*(get_endpoint(bus, d.name) for d in found))
    out = []
    for d, h in zip(found, healths, strict=True):
        model = None
        if d.kind == "llm":
            state = await bus.get_model_state(d.host)
            model = state.model if state else None
        out.append({
            "name": d.name, "kind": d.kind, "host": d.host, "base_url": d.base_url,
            "ready": bool(h and h.state == "up" and not d.disabled), "model": model,
            "disabled": d.disabled, "state": _state(d, h),
            "since": h.since if h else None, "checked_at": h.checked_at if h else None,
            "error": h.error if h else None,
        })  # fmt: skip
    return out


def restart_view(settings: Settings, h: c.EndpointHealth | None, now: float) -> dict[str, Any]:
    """The automatic restart state of one endpoint under the configured policy."""
    s = settings
    recent = sorted(t for t in (h.restarts if h else []) if now - t < s.health_restart_window_s)
    blocked_until = []
    if recent:
        blocked_until.append(recent[-1] + s.health_restart_gap_s)
    if len(recent) >= s.health_restart_max and recent:
        blocked_until.append(recent[-s.health_restart_max] + s.health_restart_window_s)
    if h is not None and h.started_at:
        blocked_until.append(h.started_at + s.health_restart_grace_s)
    nxt = max(blocked_until) if blocked_until else None
    return {
        "enabled": s.health_auto_restart, "restarts_in_window": len(recent),
        "last_restart_at": recent[-1] if recent else None,
        "next_allowed_at": nxt if nxt and nxt > now else None,
        "policy": {"max": s.health_restart_max, "window_s": s.health_restart_window_s,
                   "gap_s": s.health_restart_gap_s, "grace_s": s.health_restart_grace_s},
    }  # fmt: skip


async def deep_health(bus: Bus, settings: Settings, env: Mapping[str, str]) -> dict[str, Any]:
    """``GET /api/deep-health``: the last synthetic probe per endpoint + auto-restart state."""
    found = await declared(bus, settings, env)
    healths = await asyncio.gather(*(get_endpoint(bus, d.name) for d in found))
    now = c.now()
    out = {}
    for d, h in zip(found, healths, strict=True):
        out[d.name] = {
            "kind": d.kind, "host": d.host, "state": _state(d, h), "busy": bool(h and h.busy),
            "last_probe": msgspec.to_builtins(h.deep) if h and h.deep else None,
            "auto_restart": restart_view(settings, h, now),
        }  # fmt: skip
    return {"interval_s": settings.health_deep_s, "leader": await leader(bus), "services": out}


async def leader(bus: Bus) -> dict[str, Any] | None:
    """Which replica runs the health loop now (None: none holds a live lease)."""
    try:
        entry = await bus.kv[c.LOCKS_BUCKET].get(c.HEALTH_LEADER_KEY)
    except nats.js.errors.KeyNotFoundError:
        return None
    with contextlib.suppress(msgspec.DecodeError):
        got = msgspec.json.decode(entry.value or b"{}")
        if isinstance(got, dict) and float(got.get("expires_at") or 0) > c.now():
            return {"worker": got.get("worker"), "expires_at": got.get("expires_at")}
    return None


# --- client reports ---------------------------------------------------------------------------


class HealthReport(msgspec.Struct, kw_only=True, forbid_unknown_fields=False):
    """``POST /api/health-event``: a client says a service failed (or works)."""

    service: str
    ok: bool
    source: str | None = None
    error: str | None = None
    ms: float | None = None


def _clean(text: str | None, limit: int) -> str | None:
    return _CONTROL.sub(" ", text)[:limit] if text else None


async def resolve_subject(
    bus: Bus, settings: Settings, env: Mapping[str, str], name: str
) -> tuple[str, str]:
    """A report's ``service`` → (scope, name): a host alias, an endpoint name, or the earlier
    dashboard's names (``vllm``: the first host serving a model; ``stt``/``tts``/``embeddings``:
    the first service of that kind)."""
    if name in settings.aliases:
        return "host", name
    found = await declared(bus, settings, env)
    names = {d.name for d in found}
    if name in names:
        return "service", name
    if name == "vllm":
        for alias in settings.aliases:
            state = await bus.get_model_state(alias)
            if state is not None and state.model:
                return "service", c.vllm_endpoint(alias)
        return "service", c.vllm_endpoint(settings.aliases[0])
    for d in found:
        if d.kind == name:
            return "service", d.name
    raise UnknownEndpoint("no such service or host; see GET /api/endpoints")


async def record_report(
    bus: Bus, settings: Settings, env: Mapping[str, str], raw: bytes
) -> dict[str, Any]:
    """Publish the report as an event; it never changes a state."""
    try:
        report = msgspec.json.decode(raw, type=HealthReport)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body: {exc}"[:300], code="BAD_JSON") from exc
    if report.ms is not None and not 0 <= report.ms < 1e9:
        raise BadRequest("ms: must be a number of milliseconds >= 0", code="BAD_REPORT")
    scope, name = await resolve_subject(bus, settings, env, report.service)
    data = {"ok": report.ok, "source": _clean(report.source, 64), "ms": report.ms,
            "service": name}  # fmt: skip
    event = c.Event(kind=c.HOST_REPORT_KIND, ts=c.now(), message=_clean(report.error, 500),
                    host=name if scope == "host" else None, data=data)  # fmt: skip
    subject = (c.evt_host(name, c.HOST_REPORT_KIND) if scope == "host"
               else c.evt_service(name, c.HOST_REPORT_KIND))  # fmt: skip
    seq = await bus.publish_event(subject, event)
    deep = not report.ok and scope == "service"
    if deep:  # our own deep probe decides; the report itself changes nothing
        await request_deep_probe(bus, name)
    return {"recorded": True, "subject": f"{scope}.{name}", "seq": seq, "deep_probe": deep}


async def request_deep_probe(bus: Bus, endpoint: str) -> None:
    """Ask the health loop's leader to deep-probe ``endpoint`` now (fire and forget; the
    leader does it at most every few seconds per endpoint). For the proxy too, when an
    upstream answers 500."""
    with contextlib.suppress(nats.errors.Error, c.BadToken):
        await bus.nc.publish(c.cmd_health_deep(endpoint), b"")


# --- connectivity history ---------------------------------------------------------------------


async def read_events(
    bus: Bus, filters: tuple[str, ...], since: float, limit: int = MAX_EVENTS
) -> list[tuple[str, c.Event]]:
    """(subject, event) of SPARK_EVT matching ``filters`` from ``since`` on, oldest first,
    through one ephemeral pull consumer."""
    config = ConsumerConfig(
        filter_subjects=list(filters), deliver_policy=DeliverPolicy.BY_START_TIME,
        opt_start_time=datetime.fromtimestamp(since, UTC), ack_policy=AckPolicy.NONE,
        inactive_threshold=30.0, mem_storage=True,
    )  # fmt: skip
    info = await bus.js.add_consumer(c.EVT_STREAM, config)
    left = min(int(info.num_pending or 0), limit)
    out: list[tuple[str, c.Event]] = []
    sub = await bus.js.pull_subscribe_bind(consumer=info.name, stream=c.EVT_STREAM)
    try:
        while left > 0:
            try:
                msgs = await sub.fetch(min(left, 1000), timeout=5)
            except nats.errors.TimeoutError:
                break
            for msg in msgs:
                with contextlib.suppress(msgspec.DecodeError):
                    out.append((msg.subject, c.decode_event(msg.data)))
            left -= len(msgs)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        with contextlib.suppress(Exception):
            await bus.js.delete_consumer(c.EVT_STREAM, info.name)
    return out


def subject_of(subject: str) -> tuple[str, str]:
    """``spark.evt.<scope>.<name>.<kind>`` → (``<scope>.<name>``, kind)."""
    parts = subject.split(".")
    return f"{parts[2]}.{parts[3]}", parts[4]


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def history(events: list[tuple[str, c.Event]], since: float, now: float) -> dict[str, Any]:
    """Transitions (with the down duration on each ``up``), outages and client reports per
    subject, and a per-day (UTC) summary: outages, seconds down, reports, failed reports."""
    subjects: dict[str, dict[str, Any]] = {}
    for subject, ev in sorted(events, key=lambda se: se[1].ts):
        key, kind = subject_of(subject)
        s = subjects.setdefault(key, {"state": None, "down_since": None, "transitions": [],
                                      "outages": [], "reports": []})  # fmt: skip
        if kind == c.HOST_REPORT_KIND:
            d = ev.data if isinstance(ev.data, dict) else {}
            s["reports"].append({"ts": ev.ts, "ok": d.get("ok"), "source": d.get("source"),
                                 "ms": d.get("ms"), "error": ev.message})  # fmt: skip
        elif kind == "down" and s["state"] != "down":
            s["state"], s["down_since"] = "down", ev.ts
            s["transitions"].append({"ts": ev.ts, "to": "down", "reason": ev.message})
        elif kind == "up" and s["state"] != "up":
            start, s["state"], s["down_since"] = s["down_since"], "up", None
            down_s = round(ev.ts - start, 3) if start is not None else None
            s["transitions"].append({"ts": ev.ts, "to": "up", "down_s": down_s})
            if start is not None:
                s["outages"].append({"start": start, "end": ev.ts, "duration_s": down_s,
                                     "ongoing": False})  # fmt: skip
    for s in subjects.values():
        if s["down_since"] is not None:
            start = s["down_since"]
            s["outages"].append({"start": start, "end": None,
                                 "duration_s": round(now - start, 3), "ongoing": True})  # fmt: skip
        del s["down_since"]
    return {"since": since, "now": now, "subjects": subjects, "days": _days(subjects, since, now)}


def _days(subjects: dict[str, dict[str, Any]], since: float, now: float) -> list[dict[str, Any]]:
    out = []
    day0 = datetime.fromtimestamp(since, UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    for key, s in sorted(subjects.items()):
        day = day0
        while day.timestamp() <= now:
            lo, hi = day.timestamp(), (day + timedelta(days=1)).timestamp()
            down = sum(max(0.0, min(hi, o["end"] or now) - max(lo, o["start"]))
                       for o in s["outages"])  # fmt: skip
            outages = sum(1 for o in s["outages"] if lo <= o["start"] < hi)
            reports = [r for r in s["reports"] if lo <= r["ts"] < hi]
            if down or outages or reports:
                span = max(1.0, min(hi, now) - max(lo, since))
                out.append({
                    "day": _day(lo), "subject": key, "outages": outages,
                    "down_s": round(down, 3), "reports": len(reports),
                    "failed_reports": sum(1 for r in reports if r["ok"] is False),
                    "availability_pct": round(max(0.0, 100 * (1 - down / span)), 3),
                })  # fmt: skip
            day += timedelta(days=1)
    return out


async def connectivity(bus: Bus, settings: Settings, days: float) -> dict[str, Any]:
    """``GET /api/connectivity``: the last ``days`` (at most the stream's max age)."""
    days = max(0.001, min(days, settings.event_max_age_days))
    now = time.time()
    since = now - days * 86400
    return history(await read_events(bus, c.CONNECTIVITY_FILTERS, since), since, now)
