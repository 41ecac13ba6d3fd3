"""The redaction gateway over HTTP: ``POST /scrub`` and ``POST /rehydrate`` (the earlier
gateway's contract, its error bodies included). Handlers are thin: decode → call → render."""

from __future__ import annotations

from typing import Any

from litestar import Request, post
from litestar.datastructures import State
from litestar.response import Response

from app.redaction.chat import ChatRedaction
from app.redaction.errors import RedactionError
from app.redaction.schema import decode_rehydrate, decode_scrub
from app.redaction.service import MAP_HEADER, Redactor, policy_for
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


async def forward_redacted(
    state: State, request: Request[Any, Any, Any], forward: Any
) -> Response[Any] | None:
    """For the /v1 chat and completions handlers: None when neither the client's settings
    (``redaction_clients``) nor the request (``X-Spark-Redaction``) ask for redaction; else
    ``forward(**seams)`` (the proxy's ``forward_json``) with the scrub and rehydrate
    transforms, the map handle in the ``X-Spark-Redaction-Map`` answer header, and any
    refusal as the gateway's error body."""
    try:
        policy = policy_for(settings_of(state), request.headers)
    except RedactionError as exc:
        return _refusal(exc)
    if policy is None:
        return None
    chat = ChatRedaction(redactor_of(state), policy)
    try:
        response: Response[Any] = await forward(
            body_transform=chat.body, chunk_transform=chat.chunks
        )
    except RedactionError as exc:
        return _refusal(exc)
    if chat.handle:
        response.headers[MAP_HEADER] = chat.handle
    return response
