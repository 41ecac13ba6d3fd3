"""The redaction gateway over HTTP: ``POST /scrub`` and ``POST /rehydrate`` (the earlier
gateway's contract, its error bodies included). Handlers are thin: decode → call → render."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.datastructures import State
from litestar.response import Response

from app.redaction.errors import RedactionError
from app.redaction.schema import decode_rehydrate, decode_scrub
from app.redaction.service import Redactor
from app.routes.deps import settings_of

BODY_LIMIT = 8 * 1024 * 1024


def redactor_of(state: State) -> Redactor:
    """One gateway per app, made on first use (the map opens lazily: a bad path fails the
    call with a clear message, never the start)."""
    redactor: Redactor | None = state.get("redactor")
    if redactor is None:
        redactor = Redactor(settings_of(state), state.get("bus"))
        state.redactor = redactor
    return redactor


def _refusal(exc: RedactionError) -> Response[dict[str, Any]]:
    return Response(exc.body(), status_code=exc.status)


@post("/scrub", status_code=200, request_max_body_size=BODY_LIMIT)
async def scrub(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    try:
        req = decode_scrub(await request.body())
        return Response(await redactor_of(state).scrub(req), status_code=200)
    except RedactionError as exc:
        return _refusal(exc)


@post("/rehydrate", status_code=200, request_max_body_size=BODY_LIMIT)
async def rehydrate(state: State, request: Request[Any, Any, Any]) -> Response[dict[str, Any]]:
    try:
        req = decode_rehydrate(await request.body())
        return Response(await redactor_of(state).rehydrate(req), status_code=200)
    except RedactionError as exc:
        return _refusal(exc)


ROUTES = [scrub, rehydrate]
