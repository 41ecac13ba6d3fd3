"""The front's side of jobs: submit a host command, cancel a job, find the workers.

Submitting writes the job record (queued), its ``accepted`` event, then the command; the
command's ``Nats-Msg-Id`` is the job id, so a repeated submit with the same key runs once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from typing import Any

import msgspec
import nats.errors

from app import contracts as c
from app.bus import SUBMIT_RETRY_S, Bus
from app.config import Settings
from app.errors import (
    BadRequest,
    BusUnavailable,
    Conflict,
    NotFound,
    SparkError,
    UnknownAction,
    UnknownHost,
)


def new_job_id() -> str:
    return secrets.token_hex(8)


def check_target(settings: Settings, host: str, action: str) -> None:
    """Unknown host → 404 UNKNOWN_HOST; unknown action → 400 UNKNOWN_ACTION."""
    if settings.host(host) is None:
        raise UnknownHost(f"unknown host {host!r}; known: {', '.join(settings.aliases)}")
    if action not in c.ACTIONS:
        raise UnknownAction(f"unknown action {action!r}; known: {', '.join(c.ACTIONS)}")


async def submit(
    bus: Bus,
    settings: Settings,
    host: str,
    action: str,
    args: dict[str, Any] | None = None,
    key: str | None = None,
    timeout_s: float | None = None,
    requested_by: str = "web",
    lock_token: str | None = None,
) -> tuple[c.JobRecord, bool]:
    """Queue a host command. Returns (job, created); created is False for a repeated key.
    ``lock_token`` travels in the command's header for the executor's own lock check."""
    check_target(settings, host, action)
    try:
        job_id = c.token(key, "Idempotency-Key") if key else new_job_id()
    except c.BadToken as exc:
        raise BadRequest(str(exc), code="BAD_IDEMPOTENCY_KEY") from exc
    t = c.now()
    job = c.JobRecord(
        id=job_id,
        host=host,
        action=action,
        state="queued",
        created_at=t,
        updated_at=t,
        args=args or {},
        requested_by=requested_by,
    )
    try:
        created = await bus.create_job(job) is not None
    except (TimeoutError, nats.errors.Error) as exc:
        raise BusUnavailable("message bus unavailable; nothing was queued") from exc
    if not created:
        got = await bus.get_job(job_id)
        if got is None or (got[0].host, got[0].action) != (host, action):
            raise Conflict("this Idempotency-Key belongs to another command", code="KEY_REUSED")
        return got[0], False
    accepted = c.Event(kind="accepted", ts=t, job_id=job_id, host=host, action=action)
    command = c.Command(
        job_id=job_id, args=args or {}, requested_by=requested_by, timeout_s=timeout_s
    )
    # sent in this order on one connection, acknowledged together; the command decides: once
    # it is in the stream the job runs, even if its "accepted" event could not be stored
    event, queued = await asyncio.gather(
        bus.publish_event(
            c.evt_job(job_id, "accepted"), accepted, f"{job_id}.accepted", retry_s=SUBMIT_RETRY_S
        ),
        bus.publish_command(host, action, command, msg_id=job_id, lock_token=lock_token),
        return_exceptions=True,
    )
    if isinstance(queued, SparkError):
        await _fail_unqueued(bus, job, queued)
        raise queued
    for outcome in (queued, event):
        if isinstance(outcome, BaseException) and not isinstance(outcome, SparkError):
            raise outcome
    return job, True


async def _fail_unqueued(bus: Bus, job: c.JobRecord, exc: SparkError) -> None:
    """The command never reached the stream: say so in the record and the events."""
    t = c.now()
    failed = msgspec.structs.replace(
        job, state="failed", error=exc.message, code=exc.code, finished_at=t, updated_at=t
    )
    with contextlib.suppress(Exception):
        got = await bus.get_job(job.id)
        if got:
            await bus.update_job(failed, got[1])
        event = c.Event(
            kind="failed",
            ts=t,
            job_id=job.id,
            host=job.host,
            action=job.action,
            message=exc.message,
            code=exc.code,
        )
        await bus.publish_event(
            c.evt_job(job.id, "failed"), event, f"{job.id}.final", retry_s=SUBMIT_RETRY_S
        )


async def get(bus: Bus, job_id: str) -> c.JobRecord:
    try:
        c.token(job_id, "job id")
    except c.BadToken as exc:
        raise NotFound("unknown job", code="UNKNOWN_JOB") from exc
    got = await bus.get_job(job_id)
    if got is None:
        raise NotFound(f"unknown job {job_id!r}", code="UNKNOWN_JOB")
    return got[0]


async def cancel(bus: Bus, job_id: str) -> c.JobRecord:
    """Cancel: a queued job is marked cancelled here; a running one is stopped by its owner."""
    for _ in range(5):
        job = await get(bus, job_id)
        if job.state in c.FINAL_STATES:
            return job
        if job.state == "running":
            try:
                await bus.nc.request(c.cmd_job_cancel(job_id), b"", timeout=5.0)
            except nats.errors.NoRespondersError:
                await asyncio.sleep(0.1)  # between claim and subscribe, or owner gone
                continue
            except nats.errors.TimeoutError as exc:
                raise BusUnavailable("the job's worker did not answer the cancel") from exc
            return await _await_final(bus, job_id)
        got = await bus.get_job(job_id)
        if got is None:
            continue
        t = c.now()
        cancelled = msgspec.structs.replace(
            got[0],
            state="cancelled",
            error="cancelled before it started",
            code="CANCELLED",
            finished_at=t,
            updated_at=t,
        )
        try:
            await bus.update_job(cancelled, got[1])
        except Conflict:
            continue  # a worker claimed it meanwhile: ask the worker
        event = c.Event(
            kind="cancelled",
            ts=t,
            job_id=job_id,
            host=job.host,
            action=job.action,
            message=cancelled.error,
            code="CANCELLED",
        )
        await bus.publish_event(c.evt_job(job_id, "cancelled"), event, f"{job_id}.final")
        return cancelled
    raise Conflict("the job changed state repeatedly; try again", code="CANCEL_RACE")


async def _await_final(bus: Bus, job_id: str, within_s: float = 10.0) -> c.JobRecord:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while loop.time() < deadline:
        job = await get(bus, job_id)
        if job.state in c.FINAL_STATES:
            return job
        await asyncio.sleep(0.05)
    return await get(bus, job_id)


async def discover_workers(bus: Bus, window_s: float) -> list[dict[str, Any]]:
    """Every replica answering ``$SRV.PING`` within the window."""
    if not bus.nc.is_connected:
        return []
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    found: list[dict[str, Any]] = []
    try:
        await bus.nc.publish(c.SRV_PING, b"", reply=inbox)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + window_s
        while (left := deadline - loop.time()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                break
            with contextlib.suppress(ValueError):
                ping = json.loads(msg.data)
                found.append({k: ping.get(k) for k in ("name", "id", "version", "metadata")})
    finally:
        await sub.unsubscribe()
    found.sort(key=lambda w: (w["name"] or "", w["id"] or ""))
    return found
