"""The proxy's parts assembled (router, upstream client, on-demand scheduler, figures) and the
flow of one request: resolve the name → hold a claim on the model (waiting for a swap when
needed) → forward → relay the response.

``forward_json`` is the one function that forwards a JSON request (chat, completions,
embeddings, rerank, speech). It takes an optional ``body_transform`` (request bytes → request
bytes, before routing) and ``chunk_transform`` (response stream → response stream): the seam
where the redaction gateway hooks "redacted chat" in without touching the passthrough.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response
from litestar.datastructures import State

from app import health
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest, SparkError, error_body
from app.proxy import forward as fw
from app.proxy import speakers
from app.proxy.errors import Busy, ModelNotLoaded, SwapFailed, UnknownModel
from app.proxy.metrics import Metrics, completion_tokens
from app.proxy.ondemand import Lease, Scheduler
from app.proxy.router import Router, Target

log = logging.getLogger(__name__)

BodyTransform = Callable[[bytes], Awaitable[bytes]]
SPEECH_RETRY_AFTER_S = 60.0
PROBE_EVERY_S = 30.0
NOTICE_HEADER = "x-spark-loading-notice"
"""Opt-in (``1``/``true``) for streaming requests: SSE comments while a swap loads the model."""
NOTICE_AFTER_S = 0.05
NOTICE_EVERY_S = 5.0
MAX_JSON_BODY = 64 * 1024 * 1024
"""JSON requests are read whole (to find ``model``); images in chat make them large."""


class ModelField(msgspec.Struct):
    """The only fields the proxy reads from a JSON body; the rest is passed on untouched."""

    model: str | None = None
    stream: bool = False


class Proxy:
    def __init__(self, settings: Settings, bus: Bus | None, state: State | None = None):
        self.settings = settings
        self.bus = bus
        self.state = state
        self.client = fw.new_client(settings)
        self.lean = fw.new_lean_client(settings)
        self.router = Router(settings, bus, self.client)
        self.metrics = Metrics()
        self.scheduler = Scheduler(
            settings.aliases, self.router.current, self.swap,
            limit=settings.proxy_queue_limit, min_residency_s=settings.proxy_min_residency_s,
            max_wait_s=settings.proxy_max_wait_s, on_swap=self.metrics.swapped,
        )  # fmt: skip
        self.router.listeners.append(self._placement_changed)
        self._probed: dict[str, float] = {}
        self._background: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        await self.router.start()
        self.scheduler.start()
        if self.bus is not None:
            self.metrics.start(self.bus)

    async def stop(self) -> None:
        await self.scheduler.stop()
        await self.metrics.stop()
        await self.router.stop()
        await self.lean.close()
        await self.client.close()

    def _placement_changed(self) -> None:
        for host in self.settings.aliases:
            self.scheduler.wake(host)

    # --- swaps and probes (through the bus, as the API does) ------------------------------

    async def swap(self, host: str, key: str) -> None:
        """Submit the swap job ``POST /api/swap`` submits (swap lock checked) and wait for its
        final event; the new placement is taken from the state bucket at once."""
        from app.routes.swap import submit_swap  # the API's own submit path

        if self.state is None or self.bus is None:
            raise SparkError("on-demand swaps need the bus", code="NO_BUS", status=503)
        job = await submit_swap(self.state, key, host, None, requested_by="proxy")
        final = None
        async for _, event in self.bus.job_events(job.id):
            final = event
        if final is None or final.kind != "done":
            message = (final.message if final else None) or "the swap did not finish"
            raise SparkError(message, code=(final.code if final else None) or "SWAP_FAILED")
        placed = await self.bus.get_model_state(host)
        if placed is not None:
            self.router.set_state(placed)

    def probe_service(self, name: str) -> None:
        """A failing speech service is checked now, at most every PROBE_EVERY_S per service:
        the health loop's leader deep-probes it (a second of silence, which may restart a
        wedged one within its policy), and a ``status`` job reads its container."""
        now = time.monotonic()
        if self.state is None or now - self._probed.get(name, -PROBE_EVERY_S) < PROBE_EVERY_S:
            return
        self._probed[name] = now

        async def run() -> None:
            from app.routes.services import submit_service_op

            if self.bus is not None:
                await health.request_deep_probe(self.bus, name)
            with contextlib.suppress(SparkError):
                assert self.state is not None
                await submit_service_op(self.state, name, "status", key=None,
                                        requested_by="proxy")  # fmt: skip

        task = asyncio.create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- routing ----------------------------------------------------------------------------

    async def route(
        self,
        request: Request[Any, Any, Any],
        name: str | None,
        kind: str = "llm",
        *,
        watch: bool = True,
    ) -> tuple[Target, Lease | None]:
        """The target for ``name`` and, for a lifecycle-placed model, a claim on it; waits
        (cancellable by the client leaving) for an on-demand swap when one is needed.
        ``watch`` False: the caller watches the client itself (a loading notice stream)."""
        router = self.router

        async def wait(key: str, host: str | None = None) -> Lease:
            waiting = self.scheduler.wait(key, host)
            return await (fw.watch_client(request, waiting) if watch else waiting)

        if name:
            target = router.resolve(name)
            if target is None and router.recipe(name) is None:
                await router.refresh_on_miss()
                target = router.resolve(name)
            if target is not None:
                if target.source != "state" or target.host is None or target.key is None:
                    return target, None
                lease = self.scheduler.try_admit(target.host, target.key)
                if lease is not None:  # admitted at once, where the table says it runs
                    return target, lease
                lease = await wait(target.key, target.host)
                return self._placed(target.key, lease), lease
            found = router.recipe(name)
            if found is not None:
                key, recipe = found
                if not recipe.on_demand:
                    raise ModelNotLoaded(
                        f"model {name!r} is in the catalog but not loaded, and on_demand is off "
                        "for it; swap it in with POST /api/swap"
                    )
                lease = await wait(key)
                return self._placed(key, lease), lease
        if kind != "llm" and (service := router.service(kind)) is not None:
            return service, None
        if not name:  # the earlier dashboard's clients may omit it: fine while only one serves
            placed = {(t.host, t.key) for t in router.names.values() if t.source == "state"}
            if kind == "llm" and len(placed) == 1:
                only_host, only_key = next(iter(placed))
                if only_host is not None and only_key is not None:
                    lease = self.scheduler.try_admit(only_host, only_key) or await wait(
                        only_key, only_host
                    )
                    return self._placed(only_key, lease), lease
            raise BadRequest("model: required (more than one model serves)",
                             code="MODEL_REQUIRED")  # fmt: skip
        shown = ", ".join(router.available()) or "none"
        raise UnknownModel(f"unknown model {name!r}; available: {shown}")

    def _placed(self, key: str, lease: Lease) -> Target:
        target = self.router.placed(key)
        if target is None or target.host != lease.host:
            lease.release()
            raise SwapFailed(f"{key} is not placed after its swap", retry_after=10)
        return target

    # --- forwarding ---------------------------------------------------------------------------

    async def forward_json(
        self,
        request: Request[Any, Any, Any],
        path: str,
        *,
        kind: str = "llm",
        body_transform: BodyTransform | None = None,
        chunk_transform: fw.ChunkTransform | None = None,
    ) -> Response[Any]:
        """Forward one JSON request to the upstream its ``model`` names; the response streams
        back as it arrives. The seams: ``body_transform`` rewrites the request bytes first,
        ``chunk_transform`` rewrites the response stream."""
        started = time.perf_counter()
        raw = await request.body()
        if body_transform is not None:
            raw = await body_transform(raw)
        try:
            fields = msgspec.json.decode(raw, type=ModelField)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadRequest("body: expected a JSON object", code="BAD_JSON") from exc
        name = fields.model
        label = name or kind
        if fields.stream and request.headers.get(NOTICE_HEADER, "").lower() in ("1", "true"):
            routing = asyncio.ensure_future(self.route(request, name, kind, watch=False))
            await asyncio.wait({routing}, timeout=NOTICE_AFTER_S)
            if not routing.done():  # a swap is needed: answer now, notices while it runs
                claim = _Claim(routing)
                body = self._noticed(request, claim, path, raw, name, label, started)
                weakref.finalize(body, claim.drop)  # a stream never iterated drops it too
                return fw.RelayStream(body, status_code=200, media_type="text/event-stream",
                                      headers={"cache-control": "no-cache"})  # fmt: skip
            return await self._forward_routed(
                request, routing, path, raw, name, label, started, chunk_transform, watch=False
            )
        # a stream's headers come at once (its relay watches the client); a plain answer's
        # come after the whole generation, so that wait watches for the client leaving
        return await self._forward_routed(
            request, self.route(request, name, kind), path, raw, name, label, started,
            chunk_transform, watch=not fields.stream,
        )  # fmt: skip

    async def _forward_routed(
        self,
        request: Request[Any, Any, Any],
        routing: Awaitable[tuple[Target, Lease | None]],
        path: str,
        raw: bytes,
        name: str | None,
        label: str,
        started: float,
        chunk_transform: fw.ChunkTransform | None,
        *,
        watch: bool,
    ) -> Response[Any]:
        try:
            target, lease = await routing
        except fw.ClientGone:
            raise
        except SparkError:
            self.metrics.failed(label)
            raise
        if name and target.source == "state" and target.served != name:
            raw = _with_model(raw, target.served)  # an alias: the upstream knows the served name
        return await self._relay(
            request, target, path, raw, len(raw), started=started, lease=lease, label=label,
            chunk_transform=chunk_transform, watch=watch,
        )  # fmt: skip

    async def _noticed(
        self,
        request: Request[Any, Any, Any],
        claim: _Claim,
        path: str,
        raw: bytes,
        name: str | None,
        label: str,
        started: float,
    ) -> AsyncIterator[bytes]:
        """The opt-in loading notice: SSE comments (``: loading …``, which SSE clients skip)
        while the swap runs, then the upstream's stream, or an SSE error event. Leaving early
        cancels the wait, which drops the request's claim."""
        routing = claim.routing
        try:
            yield f": loading {name}; this request waits for it\n\n".encode()
            while not routing.done():
                await asyncio.wait({routing}, timeout=NOTICE_EVERY_S)
                if not routing.done():
                    yield f": still loading {name}\n\n".encode()
            try:
                target, lease = routing.result()
                claim.taken = True  # from here _open / the relay own the lease
                if name and target.source == "state" and target.served != name:
                    raw = _with_model(raw, target.served)
                resp, done = await self._open(
                    request, target, path, raw, len(raw), started=started, lease=lease,
                    label=label, watch=False,
                )  # fmt: skip
            except SparkError as exc:
                if not isinstance(exc, fw.ClientGone):
                    self.metrics.failed(label)
                yield b"data: " + msgspec.json.encode({"error": error_body(exc)}) + b"\n\n"
                return
            relay = fw.Relay(resp, started, done)
            if resp.status >= 400:  # the status line is sent already: say it in the stream
                content = b"".join([chunk async for chunk in relay])
                message = content.decode(errors="replace")[:2000]
                error = {"error": {"error": message, "code": f"HTTP_{resp.status}"}}
                yield b"data: " + msgspec.json.encode(error) + b"\n\n"
                return
            async for chunk in relay:
                yield chunk
        finally:
            claim.drop()

    async def forward_upload(self, request: Request[Any, Any, Any], path: str) -> Response[Any]:
        """Stream a multipart upload (``/v1/audio/transcriptions``) to the speech-to-text
        service without holding it: over ``proxy_upload_max_bytes`` → 413."""
        started = time.perf_counter()
        limit = self.settings.proxy_upload_max_bytes
        length = request.content_length
        if length is not None and length > limit:
            raise TooLarge(f"upload over {limit} bytes")
        target = self.router.service("stt")
        if target is None:
            await self.router.refresh_on_miss()
            target = self.router.service("stt")
        if target is None:
            self.metrics.failed("stt")
            raise UnknownModel("no speech-to-text service configured (services.yaml, kind stt)")
        body = _Limited(request, limit)
        try:
            return await self._relay(
                request, target, path, body.__aiter__(), length, started=started,
                lease=None, label=target.served, chunk_transform=None, watch=False,
            )  # fmt: skip
        except SparkError as exc:
            if body.exceeded:
                raise TooLarge(f"upload over {limit} bytes") from exc
            raise

    async def transcribe_with_speakers(self, request: Request[Any, Any, Any]) -> dict[str, Any]:
        """Transcription + diarization of one upload merged into speaker turns."""
        limit = self.settings.proxy_upload_max_bytes
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge(f"upload over {limit} bytes")
        stt = self.router.service("stt")
        return await speakers.transcribe_with_speakers(
            self.client, stt.base_url if stt else None, self.settings.proxy_diarization_url,
            _Limited(request, limit).__aiter__(), request.headers.get("content-type", ""),
        )  # fmt: skip

    async def _relay(
        self,
        request: Request[Any, Any, Any],
        target: Target,
        path: str,
        content: bytes | AsyncIterator[bytes],
        length: int | None,
        *,
        started: float,
        lease: Lease | None,
        label: str,
        chunk_transform: fw.ChunkTransform | None,
        watch: bool,
    ) -> Response[Any]:
        resp, done = await self._open(
            request, target, path, content, length,
            started=started, lease=lease, label=label, watch=watch,
        )  # fmt: skip
        if chunk_transform is None and fw.complete_body(resp):
            return await fw.whole_response(resp, started, done)
        relay = fw.Relay(resp, started, done)
        body = relay if chunk_transform is None else chunk_transform(relay)
        return fw.stream_response(resp, body, keep_length=chunk_transform is None)

    async def _open(
        self,
        request: Request[Any, Any, Any],
        target: Target,
        path: str,
        content: bytes | AsyncIterator[bytes],
        length: int | None,
        *,
        started: float,
        lease: Lease | None,
        label: str,
        watch: bool,
    ) -> tuple[fw.UpstreamResponse, fw.Done]:
        """Send to the upstream; the response (body unread) and the callback that ends the
        request's bookkeeping (lease, figures) exactly once."""
        metrics = self.metrics
        metrics.started(label)
        try:
            resp = await fw.open_upstream(
                self.client, self.lean, request, target.base_url + path, content,
                length=length, watch=watch,
            )  # fmt: skip
        except BaseException:
            if lease is not None:
                lease.release()
            metrics.finished(label, ok=False, ttfb_s=None, total_s=0.0, tokens=None)
            raise
        if target.kind in ("stt", "tts") and resp.status >= 500:
            resp.close()
            if lease is not None:
                lease.release()
            metrics.finished(label, ok=False, ttfb_s=None, total_s=0.0, tokens=None)
            self.probe_service(target.served)
            raise Busy(
                f"speech service {target.served} failed (HTTP {resp.status}); probing it",
                retry_after=SPEECH_RETRY_AFTER_S, code="UPSTREAM_FAILING",
            )  # fmt: skip
        status_ok = resp.status < 400

        def done(ok: bool, ttfb: float | None, tail: bytes) -> None:
            if lease is not None:
                lease.release()
            metrics.finished(
                label, ok=ok and status_ok, ttfb_s=ttfb,
                total_s=time.perf_counter() - started, tokens=completion_tokens(tail),
            )  # fmt: skip

        return resp, done


class _Claim:
    """A routing still under way for a loading-notice stream; ``drop`` gives up whatever it
    holds (cancels the wait, or releases a lease nobody took) unless the stream took it."""

    def __init__(self, routing: asyncio.Future[tuple[Target, Lease | None]]):
        self.routing = routing
        self.taken = False

    def drop(self) -> None:
        if self.taken:
            return
        self.taken = True
        if not self.routing.done():
            self.routing.cancel()
        elif not self.routing.cancelled() and self.routing.exception() is None:
            lease = self.routing.result()[1]
            if lease is not None:
                lease.release()


class TooLarge(SparkError):
    code = "BODY_TOO_LARGE"
    status = 413


class _Limited:
    """The request body as it arrives, refused past ``limit`` bytes (``exceeded`` tells the
    caller why the upload stopped, whatever the HTTP client made of the error)."""

    def __init__(self, request: Request[Any, Any, Any], limit: int):
        self.request, self.limit, self.exceeded = request, limit, False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.request.stream():
            seen += len(chunk)
            if seen > self.limit:
                self.exceeded = True
                raise TooLarge(f"upload over {self.limit} bytes")
            if chunk:
                yield chunk


def _with_model(raw: bytes, served: str) -> bytes:
    body = msgspec.json.decode(raw)
    body["model"] = served
    return msgspec.json.encode(body)


@asynccontextmanager
async def lifespan(app: Litestar) -> AsyncIterator[None]:
    """Start the proxy after the bus (the web lifespan before this one connects it)."""
    proxy = Proxy(app.state.settings, app.state.bus, app.state)
    await proxy.start()
    app.state.proxy = proxy
    try:
        yield
    finally:
        await proxy.stop()
