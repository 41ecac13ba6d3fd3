"""Swap API. For now the pre-flight: ``POST /api/swap/{key}/validate`` runs every check of a
launch of ``key`` on a host (body ``{"host": "spark1"}``; default the first host) and answers
200 with each check's verdict, without touching the host."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.params import FromPath

from app import catalog, preflight
from app.errors import BadRequest, UnknownHost
from app.routes.deps import bus_of, settings_of
from app.routes.models import BODY_LIMIT, UnknownModel


class ValidateBody(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str | None = None


@post("/api/swap/{key:str}/validate", status_code=200, request_max_body_size=BODY_LIMIT)
async def validate(state: State, request: Request[Any, Any, Any], key: FromPath[str]) -> Any:
    settings = settings_of(state)
    raw = await request.body()
    try:
        body = msgspec.json.decode(raw, type=ValidateBody) if raw.strip() else ValidateBody()
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body: {exc}", code="BAD_JSON") from exc
    host = body.host or settings.aliases[0]
    if settings.host(host) is None:
        raise UnknownHost(f"unknown host; known: {', '.join(settings.aliases)}")
    found = await asyncio.to_thread(catalog.current, *catalog.catalog_paths(settings, os.environ))
    recipe = found.models.get(key)
    if recipe is None:
        raise UnknownModel("no such model in the catalog")
    state_now = await bus_of(state).get_host_state(host)
    return msgspec.to_builtins(preflight.run(key, recipe, host, state_now))


ROUTES = [validate]
