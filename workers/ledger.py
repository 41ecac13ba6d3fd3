"""A job's record and events as the executor keeps them: claim, heartbeat, finish, reject.

Records live in the ``spark_jobs`` bucket and change only by compare-and-set, so two replicas
never both own a job. Event message ids are ``<job>.<attempt>.<n>`` and ``<job>.final``: a
publish retried after a crash or a NATS restart is deduplicated by the stream.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from app import contracts as c
from app.bus import Bus
from app.errors import Conflict

log = logging.getLogger(__name__)

FINAL_KIND = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}


@dataclass
class Lease:
    """The job this replica owns, with the record revision it last wrote."""

    job: c.JobRecord
    rev: int
    events: int = 0


class Ledger:
    def __init__(self, bus: Bus, worker: str, ack_wait_s: float):
        self.bus = bus
        self.worker = worker
        self.ack_wait_s = ack_wait_s

    async def claim(
        self, job_id: str, host: str, action: str, cmd: c.Command, redelivered: bool
    ) -> Lease | Literal["later"] | None:
        """Own the job: a Lease to run it, "later" if its live owner runs it, None if done."""
        for _ in range(5):
            got = await self.bus.get_job(job_id)
            t = c.now()
            if got is None:
                job = c.JobRecord(
                    id=job_id, host=host, action=action, state="queued", created_at=t,
                    updated_at=t, args=cmd.args, requested_by=cmd.requested_by,
                )  # fmt: skip
                rev = await self.bus.create_job(job)
                if rev is None:
                    continue
                await self.emit(job, c.Event(kind="accepted", ts=t), "accepted")
                got = (job, rev)
            job, rev = got
            if job.state in c.FINAL_STATES:
                if redelivered:  # the owner may have died between record and event
                    await self.publish_final(job)
                return None
            if job.state == "running" and job.worker != self.worker:
                beat = job.heartbeat_at or job.started_at or 0
                if t - beat < self.ack_wait_s:
                    return "later"
            claimed = msgspec.structs.replace(
                job, state="running", worker=self.worker, started_at=job.started_at or t,
                heartbeat_at=t, updated_at=t, attempts=job.attempts + 1,
            )  # fmt: skip
            try:
                rev = await self.bus.update_job(claimed, rev)
            except Conflict:
                continue
            if job.state == "running":
                log.warning("job %s taken over from %s", job_id, job.worker)
            return Lease(claimed, rev)
        return "later"

    async def heartbeat(self, lease: Lease) -> bool:
        """Refresh the record's heartbeat; False when another replica owns the job now."""
        t = c.now()
        beat = msgspec.structs.replace(lease.job, heartbeat_at=t, updated_at=t)
        try:
            lease.rev = await self.bus.update_job(beat, lease.rev)
            lease.job = beat
            return True
        except Conflict:
            got = await self.bus.get_job(lease.job.id)
            if got is None or got[0].worker != self.worker:
                return False
            lease.job, lease.rev = got
            return True

    async def finish(
        self,
        lease: Lease,
        state: str,
        result: Any,
        error: str | None,
        code: str | None,
        at: float | None = None,
    ) -> c.JobRecord:
        """Write the final record (compare-and-set, re-reading on a conflict)."""
        t = at or c.now()
        current, rev = lease.job, lease.rev
        final = current
        for _ in range(5):
            final = msgspec.structs.replace(
                current, state=state, result=result, error=error, code=code,
                finished_at=t, updated_at=t,
            )  # fmt: skip
            try:
                lease.rev = await self.bus.update_job(final, rev)
                break
            except Conflict:
                got = await self.bus.get_job(lease.job.id)
                if got is None:
                    break
                current, rev = got
        lease.job = final
        return final

    async def finish_and_announce(
        self, lease: Lease, state: str, result: Any, error: str | None, code: str | None
    ) -> c.JobRecord:
        """``finish`` and ``publish_final`` pipelined: the record's write is sent first, the
        final event right behind it on the same connection, then both acknowledgements are
        awaited (one round-trip instead of two)."""
        t = c.now()
        final = msgspec.structs.replace(
            lease.job, state=state, result=result, error=error, code=code,
            finished_at=t, updated_at=t,
        )  # fmt: skip
        write = asyncio.create_task(self.finish(lease, state, result, error, code, at=t))
        await asyncio.sleep(0)  # let the write go out first
        try:
            await self.publish_final(final)
        finally:
            final = await write
        return final

    async def reject(self, job_id: str, host: str, action: str, code: str, message: str) -> None:
        """A command that cannot run: a failed record (unless one is final) and its event."""
        t = c.now()
        job = c.JobRecord(
            id=job_id, host=host, action=action, state="failed", created_at=t, updated_at=t,
            finished_at=t, error=message, code=code,
        )  # fmt: skip
        if await self.bus.create_job(job) is None:
            got = await self.bus.get_job(job_id)
            if got and got[0].state in c.FINAL_STATES:
                job = got[0]
            elif got:
                failed = msgspec.structs.replace(
                    got[0], state="failed", error=message, code=code, finished_at=t, updated_at=t
                )
                try:
                    await self.bus.update_job(failed, got[1])
                    job = failed
                except Conflict:
                    return  # someone else is writing this job; leave it to them
        await self.publish_final(job)

    async def publish_final(self, job: c.JobRecord) -> None:
        """The job's final event, idempotent by message id."""
        event = c.Event(
            kind=FINAL_KIND[job.state], ts=job.finished_at or c.now(), message=job.error,
            code=job.code, data=job.result,
        )  # fmt: skip
        await self.emit(job, event, "final")

    async def emit(self, job: c.JobRecord, event: c.Event, suffix: str) -> None:
        event.job_id, event.host, event.action = job.id, job.host, job.action
        event.worker = event.worker or self.worker
        await self.bus.publish_event(c.evt_job(job.id, event.kind), event, f"{job.id}.{suffix}")

    async def emit_next(self, lease: Lease, event: c.Event) -> None:
        """A running job's next event (log, progress, …)."""
        lease.events += 1
        await self.emit(lease.job, event, f"{lease.job.attempts}.{lease.events}")


async def gather_quietly(*aws: Any) -> None:
    """Run side writes together; log (not raise) their failures."""
    for res in await asyncio.gather(*aws, return_exceptions=True):
        if isinstance(res, Exception):
            log.warning("side write failed: %s", res)
