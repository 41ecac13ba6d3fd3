"""Swap API (the earlier dashboard's paths): ``POST /api/swap`` starts a swap job (lock token
checked: 423 without it while the lock is held), ``GET /api/swap/{id}`` its record,
``GET /api/swap/{id}/stream`` its events (SSE, as ``/api/jobs/{id}/events``), and
``POST /api/swap/{key}/validate`` the pre-flight alone, without touching the host."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.params import FromPath

from app import catalog, jobs, preflight, swaplock
from app import contracts as c
from app.errors import BadRequest, UnknownHost
from app.routes.deps import bus_of, settings_of
from app.routes.models import BODY_LIMIT, UnknownModel


class ValidateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str | None = None


class SwapBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    model: str
    host: str | None = None
    token: str | None = None


def _decode(raw: bytes, kind: type[Any]) -> Any:
    try:
        return msgspec.json.decode(raw, type=kind) if raw.strip() else kind()
    except (msgspec.DecodeError, msgspec.ValidationError, TypeError) as exc:
        raise BadRequest(f"body: {exc}", code="BAD_JSON") from exc


async def find_recipe(state: State, key: str) -> catalog.Recipe:
    """The catalog's recipe for ``key`` as the files say now; 404 UNKNOWN_MODEL without one."""
    found = await asyncio.to_thread(
        catalog.current, *catalog.catalog_paths(settings_of(state), os.environ)
    )
    recipe = found.models.get(key)
    if recipe is None:
        raise UnknownModel("no such model in the catalog")
    return recipe


async def submit_swap(
    state: State,
    model: str,
    host: str | None,
    token: str | None,
    *,
    key: str | None = None,
    requested_by: str = "http",
) -> c.JobRecord:
    """Queue a swap of ``host`` (default: the first one) to ``model``; shared by the API and the
    models page. In order: the lock (423 without its token), the recipe (404), the host (404)."""
    settings, bus = settings_of(state), bus_of(state)
    await swaplock.require(bus, token)
    host = host or settings.aliases[0]
    recipe = await find_recipe(state, model)
    args = {"model": model, "recipe": msgspec.to_builtins(recipe)}
    job, _ = await jobs.submit(
        bus, settings, host, "swap", args, key=key,
        timeout_s=recipe.start_timeout_s * 2 + 600, requested_by=requested_by, lock_token=token,
    )  # fmt: skip
    return job


@post("/api/swap", status_code=202, request_max_body_size=BODY_LIMIT)
async def start_swap(state: State, request: Request[Any, Any, Any]) -> dict[str, Any]:
    """Body ``{"model": key, "host"?: alias, "token"?: lock token}`` → 202 with the job."""
    body: SwapBody = _decode(await request.body(), SwapBody)
    job = await submit_swap(
        state, body.model, body.host, request.headers.get(swaplock.TOKEN_HEADER) or body.token,
        key=request.headers.get("idempotency-key"),
    )  # fmt: skip
    return {
        "job_id": job.id, "model": body.model, "host": job.host,
        "events": f"/api/jobs/{job.id}/events", "stream": f"/api/swap/{job.id}/stream",
    }  # fmt: skip


async def preflight_for(state: State, key: str, host: str | None) -> preflight.Preflight:
    """The pre-flight of ``key`` on ``host`` (default: the first) from the host's last probe and
    what it runs now; shared by the API and the models page."""
    settings = settings_of(state)
    host = host or settings.aliases[0]
    if settings.host(host) is None:
        raise UnknownHost(f"unknown host; known: {', '.join(settings.aliases)}")
    recipe = await find_recipe(state, key)
    bus = bus_of(state)
    state_now, previous = await bus.get_host_state(host), await bus.get_model_state(host)
    return preflight.run(
        key, recipe, host, state_now, previous=previous,
        host_flags=await bus.get_vllm_flags(host),
    )  # fmt: skip


@post("/api/swap/{key:str}/validate", status_code=200, request_max_body_size=BODY_LIMIT)
async def validate(state: State, request: Request[Any, Any, Any], key: FromPath[str]) -> Any:
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw, type=ValidateBody) if raw.strip() else ValidateBody()
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body: {exc}", code="BAD_JSON") from exc
    return msgspec.to_builtins(await preflight_for(state, key, body.host))


ROUTES = [start_swap, validate]
"""``GET /api/swap/{id}`` and ``/api/swap/{id}/stream`` are the job routes (app/routes/api.py)."""
