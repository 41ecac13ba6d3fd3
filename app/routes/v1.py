"""The fleet's OpenAI-compatible endpoint (``/v1``): thin handlers over ``app.proxy.core``.
Errors keep the project's ``{"error","code"}`` body; the proxy's add ``Retry-After``."""

from __future__ import annotations

from functools import partial
from typing import Any

import msgspec
from litestar import Request, Response, Router, get, post
from litestar.datastructures import State

from app.errors import error_body
from app.proxy.core import MAX_JSON_BODY, Proxy
from app.proxy.errors import ProxyError
from app.routes import redaction


def proxy_of(state: State) -> Proxy:
    proxy: Proxy = state.proxy
    return proxy


def on_proxy_error(request: Request[Any, Any, Any], exc: ProxyError) -> Response[Any]:
    return Response(error_body(exc), status_code=exc.status, headers=exc.headers)


@post("/chat/completions", request_max_body_size=MAX_JSON_BODY)
async def chat_completions(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    forward = partial(proxy_of(state).forward_json, request, "/v1/chat/completions")
    redacted = await redaction.forward_redacted(state, request, forward)
    return redacted if redacted is not None else await forward()


@post("/completions", request_max_body_size=MAX_JSON_BODY)
async def completions(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    forward = partial(proxy_of(state).forward_json, request, "/v1/completions")
    redacted = await redaction.forward_redacted(state, request, forward)
    return redacted if redacted is not None else await forward()


@post("/embeddings", request_max_body_size=MAX_JSON_BODY)
async def embeddings(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    return await proxy_of(state).forward_json(request, "/v1/embeddings", kind="embeddings")


@post("/rerank", request_max_body_size=MAX_JSON_BODY)
async def rerank(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    return await proxy_of(state).forward_json(request, "/v1/rerank", kind="embeddings")


@post("/audio/speech", request_max_body_size=MAX_JSON_BODY)
async def speech(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    return await proxy_of(state).forward_json(request, "/v1/audio/speech", kind="tts")


@post("/audio/transcriptions", request_max_body_size=None)
async def transcriptions(state: State, request: Request[Any, Any, Any]) -> Response[Any]:
    """Multipart upload streamed through (limit: ``proxy_upload_max_bytes``, else 413)."""
    return await proxy_of(state).forward_upload(request, "/v1/audio/transcriptions")


@post(
    "/api/audio/transcribe-with-speakers",
    status_code=200,
    request_max_body_size=None,
    exception_handlers={ProxyError: on_proxy_error},
)
async def transcribe_with_speakers(state: State, request: Request[Any, Any, Any]) -> Any:
    """Multipart upload → ``{duration, language, speakers_detected, segments: [{start_ms,
    end_ms, speaker, text}]}`` (docs/proxy.md)."""
    return await proxy_of(state).transcribe_with_speakers(request)


@get("/models")
async def models(state: State) -> dict[str, Any]:
    """Every model of the fleet with its state: loaded (and where), loadable, stopped."""
    return {"object": "list", "data": proxy_of(state).router.models()}


@get("/api/proxy/stats")
async def stats(state: State) -> dict[str, Any]:
    """Per-model figures of the proxy (also published as ``spark.evt.proxy.stats``)."""
    snapshot = proxy_of(state).metrics.snapshot()
    return {"models": msgspec.to_builtins(snapshot)}


ROUTES: list[Any] = [
    Router(
        path="/v1",
        route_handlers=[
            chat_completions,
            completions,
            embeddings,
            rerank,
            speech,
            transcriptions,
            models,
        ],
        exception_handlers={ProxyError: on_proxy_error},
    ),
    stats,
    transcribe_with_speakers,
]
