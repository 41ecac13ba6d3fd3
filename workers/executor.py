"""The SSH executor: one durable consumer per host, one job in flight per host.

Every replica binds the same per-host durable consumer (``max_ack_pending=1``), so a host's
commands run one at a time, in arrival order, however many replicas run; hosts run in parallel.
A running job heartbeats (in-progress ack + job record); a replica that dies stops
heartbeating, the command is redelivered, and the new owner reconciles before acting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from app import contracts as c
from app.bus import MSG_ID, Bus
from app.config import HostConfig, Settings
from app.errors import Cancelled, Conflict, SparkError
from workers.actions import Action, JobContext, registry
from workers.hosts import HostRunners, record_host_outcome

log = logging.getLogger(__name__)

UNROUTED_QUEUE = "spark-exec-unrouted"


class Executor:
    def __init__(self, bus: Bus, settings: Settings, worker: str):
        self.bus = bus
        self.settings = settings
        self.worker = worker
        self.actions: dict[str, Action] = registry()
        self.runners = HostRunners(settings, on_down=self._host_down)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self.busy: dict[str, str] = {}  # host → job id running here

    # --- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        for host in self.settings.hosts:
            sub = await self._bind(host.alias)
            self._tasks.append(asyncio.create_task(self._host_loop(host, sub)))
        await self.bus.nc.subscribe(c.CMD_HOST_WILDCARD, queue=UNROUTED_QUEUE, cb=self._unrouted)

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.runners.close()

    async def _bind(self, alias: str) -> Any:
        durable = c.host_consumer(alias)
        config = ConsumerConfig(
            durable_name=durable,
            filter_subject=c.cmd_host_filter(alias),
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            max_ack_pending=1,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=-1,
        )
        try:
            await self.bus.js.add_consumer(c.CMD_STREAM, config)
        except nats.js.errors.BadRequestError:
            log.info("consumer %s exists with other settings; using it as is", durable)
        return await self.bus.js.pull_subscribe_bind(durable=durable, stream=c.CMD_STREAM)

    async def _host_loop(self, host: HostConfig, sub: Any) -> None:
        while not self._stopping.is_set():
            try:
                msgs = await sub.fetch(1, timeout=5)
            except nats.errors.TimeoutError:
                continue
            except (nats.errors.Error, OSError) as exc:
                log.debug("fetch for %s: %s", host.alias, exc)
                await asyncio.sleep(0.25)
                continue
            for msg in msgs:
                try:
                    await self._handle(host, msg)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a worker never dies on one message
                    log.exception("unhandled error on %s", msg.subject)

    # --- one command ---------------------------------------------------------------------

    async def _handle(self, host: HostConfig, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        header_id = (msg.headers or {}).get(MSG_ID)
        fallback = _job_id(None, header_id, seq)
        try:
            _, action = c.parse_cmd_subject(msg.subject)
        except c.BadToken as exc:
            return await self._reject(msg, fallback, host.alias, "-", "BAD_SUBJECT", str(exc))
        try:
            cmd = c.decode_command(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return await self._reject(msg, fallback, host.alias, action, "BAD_COMMAND", str(exc))
        job_id = _job_id(cmd.job_id, header_id, seq)
        if cmd.job_id and job_id != cmd.job_id:
            return await self._reject(
                msg, job_id, host.alias, action, "BAD_JOB_ID", "job_id: [A-Za-z0-9_-]{1,64}"
            )
        if action not in self.actions:
            known = ", ".join(sorted(self.actions))
            return await self._reject(
                msg,
                job_id,
                host.alias,
                action,
                "UNKNOWN_ACTION",
                f"unknown action {action!r}; known: {known}",
            )
        claim = await self._claim(job_id, host.alias, action, cmd)
        if claim is None:
            return await _ack(msg)
        if isinstance(claim, str):  # "later": the owner is alive
            return await msg.nak(delay=self.settings.ack_wait_s / 2)
        job, rev = claim
        await self._run(host, msg, job, rev, cmd)

    async def _claim(
        self, job_id: str, host: str, action: str, cmd: c.Command
    ) -> tuple[c.JobRecord, int] | str | None:
        """Take the job: (record, revision) to run it, "later" to retry, None if finished."""
        for _ in range(5):
            got = await self.bus.get_job(job_id)
            t = c.now()
            if got is None:
                job = c.JobRecord(
                    id=job_id,
                    host=host,
                    action=action,
                    state="queued",
                    created_at=t,
                    updated_at=t,
                    args=cmd.args,
                    requested_by=cmd.requested_by,
                )
                if await self.bus.create_job(job) is None:
                    continue
                await self._emit(job, c.Event(kind="accepted", ts=t), "accepted")
                got = await self.bus.get_job(job_id)
                if got is None:
                    continue
            job, rev = got
            if job.state in c.FINAL_STATES:
                await self._republish_final(job)
                return None
            if job.state == "running" and job.worker != self.worker:
                beat = job.heartbeat_at or job.started_at or 0
                if t - beat < self.settings.ack_wait_s:
                    return "later"  # its owner is alive; it will ack
            takeover = job.state == "running"
            claimed = msgspec.structs.replace(
                job,
                state="running",
                worker=self.worker,
                started_at=job.started_at or t,
                heartbeat_at=t,
                updated_at=t,
                attempts=job.attempts + 1,
            )
            try:
                rev = await self.bus.update_job(claimed, rev)
            except Conflict:
                continue
            if takeover:
                log.warning("job %s taken over from %s", job_id, job.worker)
            return claimed, rev
        return "later"

    async def _run(
        self, host: HostConfig, msg: Msg, job: c.JobRecord, rev: int, cmd: c.Command
    ) -> None:
        timeout = cmd.timeout_s or self.settings.command_timeout_s
        runner = self.runners.get(host)
        counter = {"n": 0}

        async def emit(event: c.Event) -> None:
            counter["n"] += 1
            await self._emit(job, event, f"{job.attempts}.{counter['n']}")

        ctx = JobContext(
            job=job,
            host=host,
            runner=runner,
            timeout_s=timeout,
            emit=emit,
            takeover=job.attempts > 1,
        )
        await emit(c.Event(kind="started", ts=c.now(), data={"attempt": job.attempts}))
        action = self.actions[job.action]
        work = asyncio.create_task(self._work(action, ctx, timeout))
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(msg, job, rev, work, lost))

        async def on_cancel(m: Msg) -> None:
            await self._on_cancel(m, runner, work)

        try:
            cancel_sub = await self.bus.nc.subscribe(c.cmd_job_cancel(job.id), cb=on_cancel)
        except BaseException:
            work.cancel()
            beat.cancel()
            raise
        self.busy[host.alias] = job.id
        outcome: tuple[str, Any, str | None, str | None]
        try:
            result = await work
            outcome = ("succeeded", result, None, None)
        except asyncio.CancelledError:
            if not work.cancelled() or self._stopping.is_set():
                raise
            if lost.is_set():
                log.warning("job %s: taken over by another replica; leaving it", job.id)
                return
            outcome = ("cancelled", None, "cancelled by request", "CANCELLED")
        except Cancelled:
            outcome = ("cancelled", None, "cancelled by request", "CANCELLED")
        except SparkError as exc:
            outcome = ("failed", None, exc.message, exc.code)
        except Exception:
            log.exception("job %s failed unexpectedly", job.id)
            outcome = ("failed", None, "internal error in the executor (see its log)", "INTERNAL")
        finally:
            self.busy.pop(host.alias, None)
            beat.cancel()
            with contextlib.suppress(nats.errors.Error):
                await cancel_sub.unsubscribe()
        state, result, error, code = outcome
        await record_host_outcome(self.bus, job, result, code, error)  # before the final event
        await self._finish(job, state, result, error, code)
        await _ack(msg)

    async def _work(self, action: Action, ctx: JobContext, limit_s: float) -> Any:
        try:
            async with asyncio.timeout(limit_s):
                if ctx.takeover:
                    done = await action.reconcile(ctx)
                    if done is not None:
                        await ctx.progress("reconciled: the effect had already happened")
                        return done
                return await action.run(ctx)
        except TimeoutError as exc:
            raise SparkError(f"job timed out after {limit_s:g} s", code="TIMEOUT") from exc

    async def _on_cancel(self, m: Msg, runner: Any, work: asyncio.Task[Any]) -> None:
        """Stop the remote command (its run() raises Cancelled); between commands, the task."""
        if not await runner.cancel():
            work.cancel()
        if m.reply:
            await self.bus.nc.publish(m.reply, b'{"ok":true}')

    async def _heartbeat(
        self, msg: Msg, job: c.JobRecord, rev: int, work: asyncio.Task[Any], lost: asyncio.Event
    ) -> None:
        """Keep the message and the job record alive; stop the work if ownership is lost."""
        every = self.settings.ack_wait_s / 3
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
                await msg.in_progress()
            t = c.now()
            beat = msgspec.structs.replace(job, heartbeat_at=t, updated_at=t)
            try:
                rev = await self.bus.update_job(beat, rev)
                job = beat
            except Conflict:
                got = await self.bus.get_job(job.id)
                if got is None or got[0].worker != self.worker:
                    lost.set()
                    work.cancel()
                    return
                job, rev = got
            except SparkError:
                continue

    async def _finish(
        self, job: c.JobRecord, state: str, result: Any, error: str | None, code: str | None
    ) -> None:
        t = c.now()
        for _ in range(5):
            got = await self.bus.get_job(job.id)
            if got is None:
                break
            current, rev = got
            final = msgspec.structs.replace(
                current,
                state=state,
                result=result,
                error=error,
                code=code,
                finished_at=t,
                updated_at=t,
            )
            try:
                await self.bus.update_job(final, rev)
                job = final
                break
            except Conflict:
                continue
        await self._republish_final(job)

    async def _republish_final(self, job: c.JobRecord) -> None:
        """The final event, idempotent by message id (safe to repeat after a crash)."""
        kind = {"succeeded": "done", "failed": "failed", "cancelled": "cancelled"}[job.state]
        event = c.Event(
            kind=kind,
            ts=job.finished_at or c.now(),
            message=job.error,
            code=job.code,
            data=job.result,
        )
        await self._emit(job, event, "final")

    async def _emit(self, job: c.JobRecord, event: c.Event, suffix: str) -> None:
        event.job_id, event.host, event.action = job.id, job.host, job.action
        event.worker = event.worker or self.worker
        await self.bus.publish_event(c.evt_job(job.id, event.kind), event, f"{job.id}.{suffix}")

    async def _reject(
        self, msg: Msg, job_id: str, host: str, action: str, code: str, message: str
    ) -> None:
        """A command that cannot run: a failed job record and event, and the message acked."""
        t = c.now()
        job = c.JobRecord(
            id=job_id,
            host=host,
            action=action,
            state="failed",
            created_at=t,
            updated_at=t,
            finished_at=t,
            error=message,
            code=code,
        )
        if await self.bus.create_job(job) is None:
            got = await self.bus.get_job(job_id)
            if got and got[0].state in c.FINAL_STATES:
                job = got[0]
            elif got:
                failed = msgspec.structs.replace(
                    got[0], state="failed", error=message, code=code, finished_at=t, updated_at=t
                )
                with contextlib.suppress(Conflict):
                    await self.bus.update_job(failed, got[1])
        await self._republish_final(job)
        await _ack(msg)

    # --- commands for hosts no replica serves ---------------------------------------------

    async def _unrouted(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        alias = parts[3] if len(parts) > 3 else ""
        if alias in self.settings.aliases:
            return
        header_id = (msg.headers or {}).get(MSG_ID)
        job_id = _job_id(None, header_id, int(c.now() * 1000))
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            job_id = _job_id(c.decode_command(msg.data).job_id, header_id, int(c.now() * 1000))
        event = c.Event(
            kind="failed",
            ts=c.now(),
            job_id=job_id,
            worker=self.worker,
            code="UNKNOWN_HOST",
            message="unknown host: no executor serves this host alias",
        )
        try:
            await self.bus.js.purge_stream(c.CMD_STREAM, subject=msg.subject)
            await self.bus.publish_event(c.evt_job(job_id, "failed"), event, f"{job_id}.final")
        except (SparkError, nats.errors.Error) as exc:
            log.warning("could not answer an unrouted command: %s", exc)

    async def _host_down(self, alias: str, reason: str) -> None:
        event = c.Event(kind="down", ts=c.now(), host=alias, worker=self.worker, message=reason)
        with contextlib.suppress(SparkError):
            await self.bus.publish_event(c.evt_host(alias, "down"), event)


async def _ack(msg: Msg) -> None:
    for _ in range(20):
        try:
            await msg.ack_sync(timeout=2.0)
            return
        except (TimeoutError, nats.errors.Error):
            await asyncio.sleep(0.25)


def _job_id(given: str | None, header: str | None, seq: int) -> str:
    for candidate in (given, header):
        if candidate:
            try:
                return c.token(candidate, "job id")
            except c.BadToken:
                continue
    return f"cmd-{seq}"
