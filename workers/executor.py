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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from app import contracts as c
from app import swaplock
from app.bus import MSG_ID, Bus
from app.config import HostConfig, Settings
from app.errors import BusUnavailable, Cancelled, SparkError
from workers.actions import Action, JobContext
from workers.hosts import HostRunners, host_outcome, mark_down
from workers.ledger import Lease, Ledger
from workers.registry import registry
from workers.runner import ShellRunner

log = logging.getLogger(__name__)

UNROUTED_QUEUE = "spark-exec-unrouted"
LONG_ACTIONS_S = {
    "download": 86400.0,
    "swap": 3600.0,
    "restart": 3600.0,
    "service": 1800.0,
    "nim_install": 7200.0,
    "push": 86400.0,  # model weights through the store (workers/transfer.py)
    "pull": 86400.0,
}
"""Default time limits of actions that outlast ``command_timeout_s`` (a command may set its own)."""


class Executor:
    def __init__(self, bus: Bus, settings: Settings, worker: str):
        self.bus = bus
        self.settings = settings
        self.worker = worker
        self.actions: dict[str, Action] = registry(bus, settings)
        self.ledger = Ledger(bus, worker, settings.ack_wait_s)
        self.runners = HostRunners(settings, on_down=self._host_down)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._deliveries: dict[str, int] = {}  # host → consumer sequence of its last command

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
        for action in self.actions.values():
            if hasattr(action, "close"):
                await action.close()

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
        except nats.js.errors.BadRequestError as exc:
            try:  # an existing consumer made with other settings is used as it is
                await self.bus.js.consumer_info(c.CMD_STREAM, durable)
            except nats.js.errors.NotFoundError:
                raise SparkError(
                    f"NATS refused the consumer for host {alias}: {exc.description}",
                    code="BUS_SETUP",
                ) from exc
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
                except (TimeoutError, nats.errors.Error, BusUnavailable) as exc:
                    # the bus failed under the job (e.g. its store is full): redelivery or a
                    # takeover finishes it once NATS can write again; one line, no traceback
                    log.warning("bus error on %s, left for redelivery: %s", msg.subject, exc)
                except Exception:  # a worker never dies on one message
                    log.exception("unhandled error on %s", msg.subject)

    # --- one command ---------------------------------------------------------------------

    async def _handle(self, host: HostConfig, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        header_id = (msg.headers or {}).get(MSG_ID)
        job_id = _job_id(None, header_id, seq)
        reject = self.ledger.reject
        try:
            target, action = c.parse_cmd_subject(msg.subject)
        except c.BadToken as exc:
            await reject(job_id, host.alias, "-", "BAD_SUBJECT", str(exc))
            return await _ack(msg)
        if target != host.alias:  # cannot happen with one consumer per alias; refuse anyway
            await reject(job_id, host.alias, action, "BAD_SUBJECT", "subject names another host")
            return await _ack(msg)
        try:
            cmd = c.decode_command(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await reject(job_id, host.alias, action, "BAD_COMMAND", str(exc))
            return await _ack(msg)
        job_id = _job_id(cmd.job_id, header_id, seq)
        if cmd.job_id and job_id != cmd.job_id:
            await reject(job_id, host.alias, action, "BAD_JOB_ID", "job_id: [A-Za-z0-9_-]{1,64}")
            return await _ack(msg)
        if action not in self.actions:
            known = ", ".join(sorted(self.actions))
            message = f"unknown action {action!r}; known: {known}"
            await reject(job_id, host.alias, action, "UNKNOWN_ACTION", message)
            return await _ack(msg)
        self._note_delivery(host, msg, action)
        redelivered = msg.metadata.num_delivered > 1
        if action in c.LOCKED_ACTIONS and not redelivered:  # the bus is a boundary too
            try:
                await swaplock.require(self.bus, (msg.headers or {}).get(c.LOCK_TOKEN_HEADER))
            except swaplock.Locked as exc:
                message = f"{exc.message} (on the bus: the {c.LOCK_TOKEN_HEADER} header)"
                await reject(job_id, host.alias, action, exc.code, message)
                return await _ack(msg)
        early = None if redelivered else self._start_early(host, job_id, action, cmd)
        try:
            lease = await self.ledger.claim(job_id, host.alias, action, cmd, redelivered)
        except BaseException:
            if early is not None:
                await early.abandon()
            raise
        if (lease is None or lease == "later") and early is not None:
            await early.abandon()
        if lease is None:
            return await _ack(msg)
        if lease == "later":  # its owner is alive and will ack
            return await msg.nak(delay=self.settings.ack_wait_s / 2)
        await self._run(host, msg, lease, cmd, early)

    def _start_early(
        self, host: HostConfig, job_id: str, action: str, cmd: c.Command
    ) -> _Early | None:
        """Start a read-only action (``reads_only``) before its claim is confirmed: it
        changes nothing, so it can be dropped if the claim fails, and the claim's
        round-trips overlap the host's work. Its events wait for the claim."""
        act = self.actions[action]
        if not getattr(act, "reads_only", False):
            return None
        emitter: asyncio.Future[Emit] = asyncio.get_running_loop().create_future()

        async def emit(event: c.Event) -> None:
            await (await asyncio.shield(emitter))(event)

        t = c.now()
        job = c.JobRecord(
            id=job_id, host=host.alias, action=action, state="running", created_at=t,
            updated_at=t, args=cmd.args, requested_by=cmd.requested_by, attempts=1,
        )  # fmt: skip
        limit = self._limit(action, cmd)
        runner = self.runners.get(host)
        ctx = JobContext(job=job, host=host, runner=runner, timeout_s=limit, emit=emit)
        return _Early(asyncio.create_task(self._work(act, ctx, limit)), emitter, runner)

    def _limit(self, action: str, cmd: c.Command) -> float:
        return cmd.timeout_s or LONG_ACTIONS_S.get(action, self.settings.command_timeout_s)

    async def _host_state(self, alias: str) -> c.HostState | None:
        try:
            return await self.bus.get_host_state(alias)
        except (TimeoutError, nats.errors.Error):
            return None

    def _note_delivery(self, host: HostConfig, msg: Msg, action: str) -> None:
        """What a probe read may be reused only while nothing could have changed the host:
        forget it on any other action, or when another replica took this host's previous
        command (a gap in the consumer's delivery sequence)."""
        seq = msg.metadata.sequence.consumer
        if action != "probe" or self._deliveries.get(host.alias) != seq - 1:
            self.runners.get(host).memo.clear()
        self._deliveries[host.alias] = seq

    async def _run(
        self, host: HostConfig, msg: Msg, lease: Lease, cmd: c.Command, early: _Early | None
    ) -> None:
        job = lease.job
        timeout = self._limit(job.action, cmd)
        runner = self.runners.get(host)

        async def emit(event: c.Event) -> None:
            await self.ledger.emit_next(lease, event)

        ctx = JobContext(
            job=job, host=host, runner=runner, timeout_s=timeout, emit=emit,
            takeover=job.attempts > 1,
        )  # fmt: skip
        # ``started`` goes out first (tasks start in creation order); its acknowledgement is
        # awaited alongside the work instead of before it
        started = asyncio.create_task(
            emit(c.Event(kind="started", ts=c.now(), data={"attempt": job.attempts}))
        )
        if early is not None:
            work = early.work
            early.emitter.set_result(emit)
        else:
            work = asyncio.create_task(self._work(self.actions[job.action], ctx, timeout))
        lost = asyncio.Event()
        beat = asyncio.create_task(self._heartbeat(msg, lease, work, lost))
        before = asyncio.create_task(self._host_state(host.alias))  # read while the job runs

        async def on_cancel(m: Msg) -> None:
            if not await runner.cancel():  # between commands: stop the action itself
                work.cancel()
            if m.reply:
                await self.bus.nc.publish(m.reply, b'{"ok":true}')

        try:
            cancel_sub = await self.bus.nc.subscribe(c.cmd_job_cancel(job.id), cb=on_cancel)
        except BaseException:
            work.cancel()
            beat.cancel()
            started.cancel()
            raise
        outcome: tuple[str, Any, str | None, str | None]
        try:
            outcome = ("succeeded", await work, None, None)
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
            beat.cancel()
            with contextlib.suppress(nats.errors.Error):
                await cancel_sub.unsubscribe()
        with contextlib.suppress(SparkError):
            await started
        if job.action != "probe":  # what it changed makes earlier reads stale
            runner.memo.clear()
        state, result, error, code = outcome
        # the host's state, the job's record, then its final event, in that order on the one
        # connection: whoever sees the final event finds both written
        host_write = asyncio.create_task(
            host_outcome(self.bus, job, result, code, error, previous=await before)
        )
        await asyncio.sleep(0)
        _, host_events = await asyncio.gather(
            self.ledger.finish_and_announce(lease, state, result, error, code), host_write
        )
        for subject, event in host_events:
            event.worker = self.worker
            with contextlib.suppress(SparkError):
                await self.bus.publish_event(subject, event)
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

    async def _heartbeat(
        self, msg: Msg, lease: Lease, work: asyncio.Task[Any], lost: asyncio.Event
    ) -> None:
        """Keep the message and the record alive; stop the work if ownership is lost.
        Bus errors (a NATS restart) are ridden out: the next beat tries again."""
        every = self.settings.ack_wait_s / 3
        while True:
            await asyncio.sleep(every)
            try:
                await msg.in_progress()
                if not await self.ledger.heartbeat(lease):
                    lost.set()
                    work.cancel()
                    return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("heartbeat of %s: %s", lease.job.id, exc)

    # --- commands for hosts no replica serves ---------------------------------------------

    async def _unrouted(self, msg: Msg) -> None:
        parts = msg.subject.split(".")
        alias = parts[3] if len(parts) > 3 else ""
        if alias in self.settings.aliases or await self._served_elsewhere(alias):
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

    async def _served_elsewhere(self, alias: str) -> bool:
        """A replica with another host list may serve it: its durable consumer exists."""
        try:
            await self.bus.js.consumer_info(c.CMD_STREAM, c.host_consumer(alias))
            return True
        except (c.BadToken, nats.js.errors.NotFoundError):
            return False
        except (TimeoutError, nats.errors.Error):
            return True  # unsure: leave the command alone

    async def _host_down(self, alias: str, reason: str) -> None:
        await mark_down(self.bus, alias, reason, self.worker)


Emit = Callable[[c.Event], Awaitable[None]]


@dataclass
class _Early:
    """A read-only action started before its claim (``Executor._start_early``)."""

    work: asyncio.Task[Any]
    emitter: asyncio.Future[Emit]
    runner: ShellRunner

    async def abandon(self) -> None:
        """The claim failed: stop it as a cancel does (a remote command already started is
        killed with its process group, not left running), then wait for it to end."""
        if not await self.runner.cancel():
            self.work.cancel()
        await asyncio.wait([self.work])
        if not self.emitter.done():
            self.emitter.cancel()


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
