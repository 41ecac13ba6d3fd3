"""Coordination API of the earlier dashboard: the swap lock (``/api/swap/lock``) and the
schedule registry (``/api/schedule``). Handlers are thin: validate → call → render."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, FromQuery
from litestar.response import Response

from app import schedule, swaplock
from app.errors import error_body
from app.routes.deps import bus_of

BODY_LIMIT = 16 * 1024


def _header_token(request: Request[Any, Any, Any]) -> str | None:
    return swaplock.check_token(request.headers.get(swaplock.TOKEN_HEADER))


@get("/api/swap/lock")
async def lock_status(state: State) -> dict[str, Any]:
    return await swaplock.status(bus_of(state))


@post("/api/swap/lock", status_code=200, request_max_body_size=BODY_LIMIT)
async def lock_acquire(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    """Acquire or (holder + token) extend; 409 names the holder and the seconds left."""
    req = swaplock.decode_acquire(await request.body())
    header = _header_token(request)
    if header is not None:
        req = msgspec.structs.replace(req, token=header)
    try:
        return Response(await swaplock.acquire(bus_of(state), req), status_code=200)
    except swaplock.LockHeld as exc:
        body = {**error_body(exc), "holder": exc.holder, "seconds_remaining": exc.seconds_remaining}
        return Response(body, status_code=exc.status)


@delete("/api/swap/lock", status_code=200, request_max_body_size=BODY_LIMIT)
async def lock_release(
    state: State, request: Request[Any, Any, Any], force: FromQuery[bool] = False
) -> dict[str, Any]:
    """Release with the token (header or body ``token``); ``?force=true`` for the operator."""
    token = _header_token(request) or swaplock.token_from_body(await request.body())
    return await swaplock.release(bus_of(state), token, force=force)


@get("/api/schedule")
async def schedule_list(state: State) -> list[dict[str, Any]]:
    return [msgspec.to_builtins(e) for e in await schedule.list_entries(bus_of(state))]


@post("/api/schedule", status_code=201, request_max_body_size=BODY_LIMIT)
async def schedule_add(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    entry = await schedule.add(bus_of(state), schedule.decode_entry(await request.body()))
    return Response(msgspec.to_builtins(entry), status_code=201)


@delete("/api/schedule/{entry_id:str}", status_code=200)
async def schedule_remove(state: State, entry_id: FromPath[str]) -> dict[str, Any]:
    return msgspec.to_builtins(await schedule.remove(bus_of(state), entry_id))


ROUTES = [lock_status, lock_acquire, lock_release, schedule_list, schedule_add, schedule_remove]
