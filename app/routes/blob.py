"""``POST /api/v1/blob/sign``: a bearer token names the namespace; the signing happens in the
blob-signer worker over the bus, so the web front never holds S3 credentials. A multipart
answer comes in its compact form (template + signatures, app/signer/compact.py) and is expanded
here into the full JSON; any other answer is streamed on chunk by chunk as the signer sends it.

Also the dashboard's "copy model to host": a ``push`` on one host that queues a ``pull`` onto
another when done (workers/transfer.py), through the store and presigned URLs."""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import MediaType, Request, post
from litestar.background_tasks import BackgroundTask
from litestar.datastructures import State
from litestar.response import Response, Stream, Template

from app import contracts as c
from app import jobs, shellsafe
from app.config import Settings
from app.errors import BadRequest, SparkError, Unauthorized
from app.routes.deps import bus_of, settings_of
from app.signer import chunks, compact
from app.signer.paths import prefix_for
from app.signer.shapes import MAX_REQUEST_BYTES, ErrorAnswer

ASK_COMPACT = {c.ANSWER_HEADER: c.ANSWER_COMPACT}
"""The front asks for multipart answers in compact form and expands them itself."""


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
        chunks.request(
            bus_of(state).nc, c.blob_sign(namespace), body, settings.signer_timeout_s, ASK_COMPACT
        )
    )
    if reply.error is not None:
        await stack.aclose()
        try:
            err = msgspec.json.decode(reply.error, type=ErrorAnswer)
        except msgspec.DecodeError as exc:
            raise SparkError("the blob signer failed") from exc
        return Response({"error": err.error, "code": err.code}, status_code=err.status or 500)
    if reply.compact:  # read whole (one message for 10,000 parts), expanded, sent as one body
        async with stack:
            data = await reply.body()
        return Response(compact.expand(data), media_type=MediaType.JSON, status_code=200)

    async def relay() -> AsyncIterator[bytes]:
        """Chunks go on to the client as they arrive; a damaged answer aborts the response."""
        async with stack:
            async for piece in reply.chunks():
                yield piece

    # the background task closes the subscription even if the client left before the first byte
    return Stream(
        relay(), media_type=MediaType.JSON, status_code=200, background=BackgroundTask(stack.aclose)
    )


FORM_LIMIT = 16 * 1024
COPY_TIMEOUT_S = 86400.0


@post("/transfers/copy", status_code=200, request_max_body_size=FORM_LIMIT)
async def copy_model_fragment(state: State, request: Request[Any, Any, Any]) -> Template:
    """Form ``src``, ``path``, ``dst``, ``dest`` (absolute directories): the push's job panel.
    The objects land under ``<signer prefix of transfer_namespace>hosts/<src>/<folder name>``."""
    settings = settings_of(state)
    form = await request.form()
    fields = {k: v.strip() for k, v in form.items() if isinstance(v, str)}
    src, dst = fields.get("src", ""), fields.get("dst", "")
    path = shellsafe.check_local_path(fields.get("path"), "path")
    dest = shellsafe.check_local_path(fields.get("dest") or path, "dest")
    for alias in (src, dst):
        jobs.check_target(settings, alias, "push")
    if src == dst:
        raise BadRequest("copy: pick two different hosts", code="SAME_HOST")
    namespace = settings.transfer_namespace
    rel_path = (
        f"{prefix_for(settings.signer_prefix, namespace)}hosts/{src}/{path.rsplit('/', 1)[-1]}"
    )
    args = {"path": path, "rel_path": rel_path, "namespace": namespace,
            "then_pull": {"host": dst, "path": dest}}  # fmt: skip
    job, _ = await jobs.submit(bus_of(state), settings, src, "push", args,
                               timeout_s=COPY_TIMEOUT_S, requested_by="page")  # fmt: skip
    if fields.get("panel") == "plain":  # the transfers page: no host tile to refresh there
        return Template("_dash_job.html", context={"job": job})
    return Template("_job_panel.html", context={"job": job})


ROUTES = [sign_blob, copy_model_fragment]
