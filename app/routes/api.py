"""JSON API: hosts, jobs (with SSE), status. Handlers are thin: validate → call → render."""

from __future__ import annotations

import os
from typing import Any

import msgspec
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Response, Stream

from app import contracts as c
from app import health, jobs, swaplock
from app.config import Settings
from app.errors import BadRequest, UnknownHost
from app.routes.deps import bus_of, settings_of
from app.sse import as_json, event_stream, job_stream, last_event_id, open_job

BODY_LIMIT = 64 * 1024


class SubmitBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a host action: its arguments and a timeout."""

    args: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout_s: float | None = None


async def read_body(request: Request[Any, Any, Any]) -> SubmitBody:
    raw = await request.body()
    if not raw.strip():
        return SubmitBody()
    try:
        body = msgspec.json.decode(raw, type=SubmitBody)
    except msgspec.DecodeError as exc:
        raise BadRequest(
            f"body is not valid JSON for this endpoint: {exc}", code="BAD_JSON"
        ) from exc
    if body.timeout_s is not None and not 0 < body.timeout_s <= 86400:
        raise BadRequest("timeout_s: must be in (0, 86400]", code="BAD_TIMEOUT")
    return body


def host_view(settings: Settings, alias: str, state: c.HostState | None) -> dict[str, Any]:
    h = settings.host(alias)
    assert h is not None
    return {
        "alias": h.alias,
        "address": h.address,
        "port": h.port,
        "user": h.user,
        "transport": h.transport,
        "state": msgspec.to_builtins(state) if state else None,
    }


@get("/api/hosts")
async def list_hosts(state: State) -> list[dict[str, Any]]:
    bus, settings = bus_of(state), settings_of(state)
    return [host_view(settings, a, await bus.get_host_state(a)) for a in settings.aliases]


@post("/api/hosts/{host:str}/{action:str}", status_code=202, request_max_body_size=BODY_LIMIT)
async def host_action(
    state: State, request: Request[Any, Any, Any], host: FromPath[str], action: FromPath[str]
) -> Response[dict[str, Any]]:
    body = await read_body(request)
    token = request.headers.get(swaplock.TOKEN_HEADER)
    if action in c.LOCKED_ACTIONS:  # what changes the served model honours the swap lock
        await swaplock.require(bus_of(state), token)
    job, created = await jobs.submit(
        bus_of(state),
        settings_of(state),
        host,
        action,
        body.args,
        key=request.headers.get("idempotency-key"),
        timeout_s=body.timeout_s,
        requested_by="http",
        lock_token=token if action in c.LOCKED_ACTIONS else None,
    )
    return Response(
        {
            "job_id": job.id,
            "events": f"/api/jobs/{job.id}/events",
            "job": f"/api/jobs/{job.id}",
            "created": created,
        },
        status_code=202,
    )


@get("/api/jobs")
async def list_jobs(state: State, limit: FromQuery[int] = 200) -> list[dict[str, Any]]:
    found = await bus_of(state).list_jobs(limit=max(1, min(limit, 1000)))
    return [msgspec.to_builtins(j) for j in found]


@get(["/api/jobs/{job_id:str}", "/api/swap/{job_id:str}"])
async def get_job(state: State, job_id: FromPath[str]) -> dict[str, Any]:
    return msgspec.to_builtins(await jobs.get(bus_of(state), job_id))


@post("/api/jobs/{job_id:str}/cancel", status_code=200, request_max_body_size=BODY_LIMIT)
async def cancel_job(state: State, job_id: FromPath[str]) -> dict[str, Any]:
    return msgspec.to_builtins(await jobs.cancel(bus_of(state), job_id))


@get(["/api/jobs/{job_id:str}/events", "/api/swap/{job_id:str}/stream"])
async def job_events(
    state: State, request: Request[Any, Any, Any], job_id: FromPath[str]
) -> Stream:
    bus = bus_of(state)
    after = last_event_id(request.headers.get("last-event-id"))
    sub = await open_job(bus, job_id, after)  # 404 before the stream starts
    return event_stream(job_stream(bus, job_id, after, as_json, sub=sub))


@get("/api/hosts/{host:str}/model")
async def host_model(state: State, host: FromPath[str]) -> dict[str, Any]:
    """What the host serves, as the last swap / stop / restart left it."""
    settings = settings_of(state)
    if settings.host(host) is None:
        raise UnknownHost(f"unknown host; known: {', '.join(settings.aliases)}")
    found = await bus_of(state).get_model_state(host)
    return msgspec.to_builtins(found) if found else {"host": host, "model": None}


@get("/api/status")
async def status(state: State) -> dict[str, Any]:
    bus, settings = bus_of(state), settings_of(state)
    connected = bus.nc.is_connected
    workers = await jobs.discover_workers(bus, settings.discovery_window_s) if connected else []
    hosts = []
    for alias in settings.aliases:
        st = await bus.get_host_state(alias) if connected else None
        model = await bus.get_model_state(alias) if connected else None
        hosts.append(
            {
                "alias": alias,
                "up": st.up if st else None,
                "checked_at": st.checked_at if st else None,
                "model": model.model if model else None,
            }
        )
    return {
        "bus": {"connected": connected},
        "workers": workers,
        "hosts": hosts,
        "endpoints": await health.endpoints(bus, settings, os.environ) if connected else [],
        "health_leader": await health.leader(bus) if connected else None,
        "actions": list(c.ACTIONS),
    }


ROUTES = [list_hosts, host_model, host_action, list_jobs, get_job, cancel_job, job_events, status]
