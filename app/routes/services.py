"""Auxiliary services API (the earlier dashboard's paths): ``GET /api/services`` lists the
declared services (``services.yaml`` + overrides, read on every request) with the last known
status; ``POST /api/services/{name}/{start|stop|restart|status}`` queues a ``service`` job on the
service's host; ``POST /api/nim/install`` queues a ``nim_install`` job (the NGC key comes from
the settings of the executor, never from the request)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from litestar import Request, get, post
from litestar.datastructures import State
from litestar.params import FromPath
from litestar.response import Response

from app import jobs, services
from app.bus import Bus
from app.config import Settings
from app.contracts import JobRecord
from app.errors import BadRequest, Conflict, NotFound
from app.routes.deps import bus_of, settings_of

BODY_LIMIT = 64 * 1024
STOP_TIMEOUT_S = 300.0
NIM_TIMEOUT_S = 3600.0
"""A first NIM start pulls an image of many GB."""
KEY_FIELDS = frozenset({"ngc_key", "ngc_api_key", "NGC_API_KEY", "api_key", "key"})


class UnknownService(NotFound):
    code = "UNKNOWN_SERVICE"


class ServiceDisabled(Conflict):
    code = "SERVICE_DISABLED"


class HostNotConfigured(Conflict):
    code = "HOST_NOT_CONFIGURED"


class NgcKeyMissing(Conflict):
    code = "NGC_KEY_MISSING"


async def _current(state: State) -> services.Services:
    return await asyncio.to_thread(services.current, settings_of(state), os.environ)


def _base_url(settings: Settings, svc: services.Service) -> str | None:
    host = settings.host(svc.host)
    if host is None:
        return None
    address = "127.0.0.1" if host.transport == "local" else host.address
    return f"http://{f'[{address}]' if ':' in address else address}:{svc.port}"


async def _last_status(bus: Bus, host: str, name: str) -> dict[str, Any] | None:
    with contextlib.suppress(nats.js.errors.KeyNotFoundError, nats.errors.Error, ValueError):
        entry = await bus.state.get(services.state_key(host, name))
        if entry.value:
            got = msgspec.json.decode(entry.value)
            return got if isinstance(got, dict) else None
    return None


def service_view(
    found: services.Services, name: str, settings: Settings, status: dict[str, Any] | None
) -> dict[str, Any]:
    svc = found.services[name]
    return {
        "name": name, "kind": svc.kind, "host": svc.host, "port": svc.port,
        "container": svc.container, "container_port": svc.container_port, "image": svc.image,
        "gpus": svc.gpus, "health": svc.health, "disabled": found.disabled(name),
        "configured_host": settings.host(svc.host) is not None,
        "base_url": _base_url(settings, svc), "source": found.sources[name], "status": status,
    }  # fmt: skip


async def service_views(state: State) -> list[dict[str, Any]]:
    """Every declared service (sorted by name) with its last known status; shared with the
    services page."""
    settings, bus = settings_of(state), bus_of(state)
    found = await _current(state)
    out = []
    for name in sorted(found.services):
        host = found.services[name].host
        status = await _last_status(bus, host, name) if settings.host(host) else None
        out.append(service_view(found, name, settings, status))
    return out


async def last_status(state: State, host: str, name: str) -> dict[str, Any] | None:
    return await _last_status(bus_of(state), host, name)


@get("/api/services")
async def list_services(state: State) -> list[dict[str, Any]]:
    return await service_views(state)


@post("/api/services/{name:str}/{op:str}", status_code=202, request_max_body_size=BODY_LIMIT)
async def service_op(
    state: State, request: Request[Any, Any, Any], name: FromPath[str], op: FromPath[str]
) -> Response[dict[str, Any]]:
    """Queue ``op`` on the service's host. Disabled: start and restart refused (409), stop and
    status allowed (a disabled service may still run from before)."""
    job, created = await submit_service_op(
        state, name, op, key=request.headers.get("idempotency-key"), requested_by="http"
    )
    return Response(_job_body(job.id, job.host, created, name=name, op=op), status_code=202)


async def submit_service_op(
    state: State, name: str, op: str, *, key: str | None, requested_by: str
) -> tuple[JobRecord, bool]:
    """Resolve ``name`` and queue the ``service`` job for ``op`` (shared with the services
    page): UnknownService, UNKNOWN_OP, ServiceDisabled, HostNotConfigured as the API answers."""
    settings = settings_of(state)
    found = await _current(state)
    svc = found.services.get(name)
    if svc is None:
        raise UnknownService("no such service")
    if op not in services.OPS:
        raise NotFound(f"unknown operation; one of {', '.join(services.OPS)}", code="UNKNOWN_OP")
    if op in ("start", "restart") and found.disabled(name):
        raise ServiceDisabled(f"service {name} is disabled (DISABLED_SERVICES or disabled: true)")
    if settings.host(svc.host) is None:
        raise HostNotConfigured(
            f"service {name} runs on host {svc.host}, which is not configured "
            f"(hosts: {', '.join(settings.aliases)})"
        )
    args = {"name": name, "op": op, "service": msgspec.to_builtins(svc)}
    timeout = svc.start_timeout_s + 600.0 if op in ("start", "restart") else STOP_TIMEOUT_S
    return await jobs.submit(
        bus_of(state), settings, svc.host, "service", args,
        key=key, timeout_s=timeout, requested_by=requested_by,
    )  # fmt: skip


@post("/api/nim/install", status_code=202, request_max_body_size=BODY_LIMIT)
async def nim_install(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Body ``{image, container, port, volume?, env?, login?, host?}`` (host: default the
    first). The NGC key is the server's setting ``ngc_key`` (NGC_API_KEY); a request that
    carries a key is refused without repeating it."""
    settings = settings_of(state)
    try:
        body = msgspec.json.decode(await request.body())
    except msgspec.DecodeError as exc:
        raise BadRequest("body: not valid JSON", code="BAD_JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body: expected a JSON object", code="BAD_JSON")
    if KEY_FIELDS & set(body):
        raise BadRequest(
            "the NGC key is not accepted in a request; set NGC_API_KEY (settings ngc_key) on "
            "the server", code="NGC_KEY_NOT_ACCEPTED",
        )  # fmt: skip
    host = body.pop("host", None) or settings.aliases[0]
    if not isinstance(host, str):
        raise BadRequest("host: expected a host alias", code="BAD_JSON")
    nim = services.validate_nim(body)
    if not settings.ngc_key:
        raise NgcKeyMissing("no NGC key configured: set NGC_API_KEY (settings ngc_key)")
    job, created = await jobs.submit(
        bus_of(state), settings, host, "nim_install", msgspec.to_builtins(nim),
        key=request.headers.get("idempotency-key"), timeout_s=NIM_TIMEOUT_S,
        requested_by="http",
    )  # fmt: skip
    return Response(_job_body(job.id, job.host, created, container=nim.container),
                    status_code=202)  # fmt: skip


def _job_body(job_id: str, host: str, created: bool, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job_id, "host": host, "events": f"/api/jobs/{job_id}/events",
        "job": f"/api/jobs/{job_id}", "created": created, **extra,
    }  # fmt: skip


ROUTES = [list_services, service_op, nim_install]
