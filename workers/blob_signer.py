"""The blob-signer worker: answers ``spark.cmd.blob.sign.<namespace>`` (a NATS micro service in
the ``spark-blob-signer`` queue group; run any number of replicas).

The namespace is the subject's last token; NATS permissions fence who may publish to which.
Answers over the server's max payload go back in chunks (app/signer/chunks.py); a requester
that asks (``Spark-Answer: compact``, as the web front does) gets a multipart answer in its
compact form (app/signer/compact.py), its signatures split with a helper process on another core
(app/signer/helper.py). Every signing is audited on ``spark.evt.blob.<namespace>.signed`` before
the answer's last message leaves; the S3 secret never leaves this process (the helper gets only
the day's derived signing key, over a pipe).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

import msgspec
from nats.micro.request import Request
from nats.micro.service import EndpointConfig

from app import contracts as c
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest, SparkError
from app.signer import chunks
from app.signer.helper import Helper
from app.signer.service import Audit, Signer
from app.signer.shapes import ErrorAnswer
from workers.runtime import register, run_until_stopped

log = logging.getLogger(__name__)

IN_FLIGHT = 16
"""Requests one replica works on at once (signing is CPU-bound; this overlaps store calls)."""
DRAIN_S = 10.0


async def start(bus: Bus, settings: Settings, worker: str) -> Callable[[], Awaitable[None]]:
    signer = Signer(settings)
    await signer.open()
    helper = Helper()
    if (os.cpu_count() or 1) > 1:  # a second core: big answers are signed on both
        await helper.start()
    service = await register(bus, c.SIGNER_SERVICE, worker, "presigns S3 URLs per namespace")

    in_flight: set[asyncio.Task[None]] = set()
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def handle(req: Request) -> None:
        """Each request in its own task, so a slow store call does not hold up the others;
        at most IN_FLIGHT at once (the subscription waits for a free slot)."""
        await slots.acquire()
        task = asyncio.create_task(answer(bus, signer, worker, req, helper))
        in_flight.add(task)
        task.add_done_callback(done)

    def done(task: asyncio.Task[None]) -> None:
        in_flight.discard(task)
        slots.release()

    await service.add_endpoint(
        EndpointConfig(
            name=c.BLOB_SIGN_ENDPOINT,
            subject=c.BLOB_SIGN_WILDCARD,
            queue_group=c.SIGNER_QUEUE,
            handler=handle,
        )
    )
    await bus.nc.flush()  # the server knows the endpoint before this replica says it is ready

    async def teardown() -> None:
        await service.stop()
        if in_flight:
            await asyncio.wait(in_flight, timeout=DRAIN_S)
        await helper.close()
        await signer.close()

    return teardown


async def answer(
    bus: Bus, signer: Signer, worker: str, req: Request, helper: Helper | None = None
) -> None:
    """Sign, audit, reply; a refusal is one error message. Never raises (a bad message must not
    stop the worker)."""
    try:
        try:
            namespace = c.parse_blob_sign_subject(req.subject)
        except c.BadToken as exc:
            raise BadRequest("bad namespace in subject", code="BAD_NAMESPACE") from exc
        signed = await signer.sign(namespace, req.data)
        event = audit_event(signed.audit, worker)
        audited = asyncio.create_task(bus.publish_event(c.evt_blob(namespace, "signed"), event))

        async def publish(data: bytes, headers: dict[str, str]) -> None:
            await req.respond(data, headers=headers)  # each publishes to the reply subject

        compact = signed.multipart and (req.headers or {}).get(c.ANSWER_HEADER) == c.ANSWER_COMPACT
        form = {c.ANSWER_HEADER: c.ANSWER_COMPACT} if compact else None
        writer = chunks.ChunkWriter(publish, bus.nc.max_payload, form)
        try:
            if compact:
                parts = signed.part_signer()
                await writer.write(signed.compact_head(parts))
                await writer.write(await (helper or Helper()).signatures(parts, signed.parts))
            else:
                for piece in signed.pieces():
                    await writer.write(piece)
                    await asyncio.sleep(0)  # the audit's publish and other requests move
        finally:
            await audited  # recorded before the answer's last message leaves, even on failure
        await writer.close()
    except SparkError as exc:
        await _refuse(req, exc)
    except Exception:
        log.exception("blob signer failed on %s", req.subject)
        await _refuse(req, SparkError("internal error in the blob signer"))


async def _refuse(req: Request, exc: SparkError) -> None:
    body = msgspec.json.encode(ErrorAnswer(error=exc.message, code=exc.code, status=exc.status))
    with contextlib.suppress(ValueError):  # no reply subject: nobody to tell
        await req.respond_error(str(exc.status), exc.code, data=body)


def audit_event(audit: Audit, worker: str) -> c.Event:
    """The audit record: who, where, what; never a URL, signature or upload id."""
    return c.Event(
        kind="signed",
        ts=c.now(),
        worker=worker,
        data={
            "namespace": audit.namespace,
            "bucket": audit.bucket,
            "key": audit.key,
            "op": audit.op,
            "parts": audit.parts,
            "expires_at": audit.expires_at,
        },
    )


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    async def setup(bus: Bus, worker: str) -> Callable[[], Awaitable[None]]:
        return await start(bus, settings, worker)

    await run_until_stopped(settings, "blob-signer", setup, stop)
