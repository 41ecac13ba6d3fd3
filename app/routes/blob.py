"""``POST /api/v1/blob/sign``: a bearer token names the namespace; the signing happens in the
blob-signer worker over the bus, so the web front never holds S3 credentials. The answer is
streamed on to the client chunk by chunk as the signer sends it."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import MediaType, Request, post
from litestar.datastructures import State
from litestar.response import Response, Stream

from app import contracts as c
from app.config import Settings
from app.errors import SparkError, Unauthorized
from app.routes.deps import bus_of, settings_of
from app.signer import chunks
from app.signer.shapes import MAX_REQUEST_BYTES, ErrorAnswer


def namespace_of(settings: Settings, authorization: str | None) -> str:
    """The namespace of a ``Bearer`` token; 401 when absent or unknown (compared in constant
    time, every token tried)."""
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("a bearer token is required")
    found = None
    for token, namespace in settings.signer_tokens.items():
        if hmac.compare_digest(token.encode(), given.strip().encode()):
            found = namespace
    if found is None:
        raise Unauthorized("unknown token")
    return found


@post("/api/v1/blob/sign", status_code=200, request_max_body_size=MAX_REQUEST_BYTES)
async def sign_blob(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    settings = settings_of(state)
    namespace = namespace_of(settings, request.headers.get("authorization"))
    body = await request.body()
    stack = contextlib.AsyncExitStack()
    reply = await stack.enter_async_context(
        chunks.request(bus_of(state).nc, c.blob_sign(namespace), body, settings.signer_timeout_s)
    )
    if reply.error is not None:
        await stack.aclose()
        try:
            err = msgspec.json.decode(reply.error, type=ErrorAnswer)
        except msgspec.DecodeError as exc:
            raise SparkError("the blob signer failed") from exc
        return Response({"error": err.error, "code": err.code}, status_code=err.status or 500)

    async def relay() -> AsyncIterator[bytes]:
        """Chunks go on to the client as they arrive; a damaged answer aborts the response."""
        async with stack:
            async for piece in reply.chunks():
                yield piece

    return Stream(relay(), media_type=MediaType.JSON, status_code=200)


ROUTES = [sign_blob]
