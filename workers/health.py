"""The health loop: one replica (the leader) probes every host and every endpoint, records what
it finds in ``spark_state`` and on ``spark.evt.host.<host>.<kind>`` /
``spark.evt.service.<endpoint>.<kind>``, and restarts a wedged endpoint within the restart
policy. docs/health.md has the whole picture.

Hosts are probed with the executor's own probe (``workers.probe``) over this worker's own
pooled SSH connection, without a job record per poll. That connection is kept alive, so a lost
connection (an outage shorter than the poll interval) is a ``down`` event at once, and the host
is probed again straight away to see it come back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import httpx
import msgspec
import nats.errors
import nats.js.errors

from app import contracts as c
from app import jobs, services, swaplock
from app.bus import Bus
from app.config import HostConfig, Settings
from app.errors import SparkError
from workers import healthcheck as hc
from workers.hosts import UNREACHABLE_CODES, HostRunners, mark_down
from workers.probe import probe
from workers.runtime import register, run_until_stopped

log = logging.getLogger(__name__)

HEALTH_SERVICE = "spark-health"
ASK_EVERY_S = 10.0
"""At most one asked-for deep probe per endpoint this often (``cmd_health_deep``)."""
AVAILABLE = frozenset({"up", "idle"})
"""Endpoint states that count as reachable in the connectivity history."""


# --- the restart policy (pure) --------------------------------------------------------------


def restart_decision(
    settings: Settings, ep: c.EndpointHealth, now: float, loop_started: float, locked: bool
) -> tuple[bool, str]:
    """(restart?, reason) for a wedged endpoint: at most ``health_restart_max`` per window,
    ``health_restart_gap_s`` apart, none within ``health_restart_grace_s`` of a start."""
    s = settings
    recent = [t for t in ep.restarts if now - t < s.health_restart_window_s]
    started = max(loop_started, ep.started_at or 0.0)
    if not s.health_auto_restart:
        return False, "automatic restarts are off (health_auto_restart)"
    if now - started < s.health_restart_grace_s:
        return False, f"within {s.health_restart_grace_s:g} s of its start"
    if len(recent) >= s.health_restart_max:
        return False, (f"{len(recent)} restarts in the last {s.health_restart_window_s:g} s "
                       f"(limit {s.health_restart_max})")  # fmt: skip
    if recent and now - max(recent) < s.health_restart_gap_s:
        return (
            False,
            f"last restart {now - max(recent):.0f} s ago (gap {s.health_restart_gap_s:g} s)",
        )
    if locked:
        return False, "the swap lock is held"
    return True, "wedged"


# --- the loop ------------------------------------------------------------------------------


class HealthLoop:
    """Leadership, polling and recording; ``start`` / ``stop``."""

    def __init__(
        self, bus: Bus, settings: Settings, worker: str, env: Mapping[str, str] | None = None
    ) -> None:
        self.bus = bus
        self.settings = settings
        self.worker = worker
        self.env = os.environ if env is None else env
        self.leader = False
        self.led_since = 0.0
        self.runners: HostRunners | None = None
        self.client: httpx.AsyncClient | None = None
        self._wake = asyncio.Event()
        self._urgent: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()
        self._services: dict[str, services.Service] = {}
        self._deep_now: set[str] = set()
        self._asked: dict[str, float] = {}
        self._sub: Any = None

    async def start(self) -> None:
        self._sub = await self.bus.nc.subscribe(c.HEALTH_DEEP_WILDCARD, cb=self._asked_deep)
        self._tasks = [asyncio.create_task(self._lease_loop()),
                       asyncio.create_task(self._poll_loop())]  # fmt: skip

    async def stop(self) -> None:
        self._stopping.set()
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
        for task in self._tasks:
            task.cancel()
        if self._tasks:  # bounded: nats-py can swallow a cancel that lands inside a publish
            await asyncio.wait(self._tasks, timeout=5)
        await self._step_down()
        if self.leader:
            with contextlib.suppress(Exception):
                await self._release()

    # --- leadership ------------------------------------------------------------------------

    async def _lease_loop(self) -> None:
        every = self.settings.health_leader_ttl_s / 3
        while True:
            try:
                was, self.leader = self.leader, await self._lead()
            except (TimeoutError, nats.errors.Error, SparkError) as exc:
                log.debug("health leadership: %s", exc)
                was, self.leader = self.leader, False
            if self.leader and not was:
                self.led_since = c.now()
                log.info("%s leads the health loop", self.worker)
                self._wake.set()
            elif was and not self.leader:
                log.info("%s no longer leads the health loop", self.worker)
                await self._step_down()
            await asyncio.sleep(every)

    async def _lead(self) -> bool:
        """Take or renew ``spark_locks/health`` with compare-and-set; True while we hold it."""
        kv = self.bus.kv[c.LOCKS_BUCKET]
        now = c.now()
        record = c.encode(
            {"worker": self.worker, "expires_at": now + self.settings.health_leader_ttl_s}
        )
        try:
            entry = await kv.get(c.HEALTH_LEADER_KEY)
        except nats.js.errors.KeyNotFoundError:
            try:
                await kv.create(c.HEALTH_LEADER_KEY, record)
                return True
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
        held: dict[str, Any] = {}
        with contextlib.suppress(msgspec.DecodeError):
            got = msgspec.json.decode(entry.value or b"{}")
            held = got if isinstance(got, dict) else {}
        if held.get("worker") != self.worker and float(held.get("expires_at") or 0) > now:
            return False
        try:
            await kv.update(c.HEALTH_LEADER_KEY, record, last=entry.revision)
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            return False

    async def _release(self) -> None:
        kv = self.bus.kv[c.LOCKS_BUCKET]
        entry = await kv.get(c.HEALTH_LEADER_KEY)
        got = msgspec.json.decode(entry.value or b"{}")
        if isinstance(got, dict) and got.get("worker") == self.worker:
            await kv.delete(c.HEALTH_LEADER_KEY, last=entry.revision)

    async def _step_down(self) -> None:
        runners, self.runners = self.runners, None
        client, self.client = self.client, None
        if runners is not None:
            await runners.close()
        if client is not None:
            await client.aclose()

    # --- polling ---------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            if self.leader:
                try:
                    await self.round()
                except asyncio.CancelledError:
                    raise
                except Exception:  # the loop never dies on one bad round
                    log.exception("health round failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.health_poll_s)
            self._wake.clear()

    def _resources(self) -> tuple[HostRunners, httpx.AsyncClient]:
        if self.runners is None:
            self.runners = HostRunners(self.settings, on_down=self._connection_lost)
        if self.client is None:
            self.client = httpx.AsyncClient(timeout=self.settings.health_timeout_s)
        return self.runners, self.client

    async def _asked_deep(self, msg: Any) -> None:
        """``spark.cmd.health.deep.<endpoint>``: deep-probe it at the next round (now), at
        most once per ``ASK_EVERY_S`` per endpoint, so reports cannot flood an endpoint."""
        endpoint = msg.subject.rsplit(".", 1)[-1]
        now = c.now()
        if not self.leader or now - self._asked.get(endpoint, 0.0) < ASK_EVERY_S:
            return
        self._asked[endpoint] = now
        self._deep_now.add(endpoint)
        self._wake.set()

    async def _connection_lost(self, alias: str, reason: str) -> None:
        """The kept SSH connection dropped: the host is down now; look again at once."""
        await mark_down(self.bus, alias, reason, self.worker)
        self._urgent.add(alias)
        self._wake.set()

    async def round(self) -> None:
        """Probe every host, then check every endpoint."""
        runners, client = self._resources()
        self._urgent.clear()
        await asyncio.gather(*(self._probe_host(runners, h) for h in self.settings.hosts))
        targets = await self._targets()
        await asyncio.gather(*(self._check(client, t) for t in targets))

    async def _probe_host(self, runners: HostRunners, host: HostConfig) -> None:
        result: c.ProbeResult | None = None
        code = error = None
        try:
            result = await probe(
                runners.get(host), host.alias, timeout=self.settings.health_timeout_s
            )
        except SparkError as exc:
            code, error = exc.code, exc.message
        except Exception:
            log.exception("probe of %s", host.alias)
            return
        await record_host(self.bus, host.alias, result, code, error, self.worker)

    # --- endpoints -------------------------------------------------------------------------

    async def _targets(self) -> list[tuple[hc.Target, bool]]:
        """(target, disabled): every host's vLLM and every declared service on a known host."""
        out: list[tuple[hc.Target, bool]] = []
        for host in self.settings.hosts:
            state = await self.bus.get_model_state(host.alias)
            base = None
            served = None
            if state is not None and state.model and state.port:
                base = base_url(host, state.port)
                served = str(state.recipe.get("served_name") or state.model)
            out.append((hc.Target(name=c.vllm_endpoint(host.alias), kind="llm", host=host.alias,
                                  base_url=base, served=served), False))  # fmt: skip
        try:
            found = await asyncio.to_thread(services.current, self.settings, self.env)
        except SparkError as exc:
            log.warning("services not checked: %s", exc.message)
            return out
        self._services = dict(found.services)
        for name, svc in sorted(found.services.items()):
            where = self.settings.host(svc.host)
            if where is None:
                continue
            out.append((hc.Target(name=name, kind=svc.kind, host=svc.host,
                                  base_url=base_url(where, svc.port), health_path=svc.health),
                        found.disabled(name)))  # fmt: skip
        return out

    async def _check(self, client: httpx.AsyncClient, item: tuple[hc.Target, bool]) -> None:
        target, disabled = item
        try:
            await self._check_one(client, target, disabled)
        except (TimeoutError, SparkError, nats.errors.Error) as exc:
            log.warning("health of %s not recorded: %s", target.name, exc)

    async def _check_one(self, client: httpx.AsyncClient, t: hc.Target, disabled: bool) -> None:
        prev = await get_endpoint(self.bus, t.name)
        now = c.now()
        ep = c.EndpointHealth(
            name=t.name, kind=t.kind, host=t.host, base_url=t.base_url, state="unknown",
            checked_at=now, since=prev.since if prev else now, model=t.served,
            disabled=disabled, deep=prev.deep if prev else None,
            restarts=[r for r in (prev.restarts if prev else [])
                      if now - r < self.settings.health_restart_window_s],
            started_at=prev.started_at if prev else None,
        )  # fmt: skip
        if disabled:
            ep.state = "disabled"
            await self._store(ep, prev)
            return
        quick = await hc.light(client, t)
        ep.state = {"ok": "up", "idle": "idle", "down": "down"}.get(quick.state, "failed")
        ep.error = quick.error
        asked = t.name in self._deep_now
        self._deep_now.discard(t.name)
        due = asked or ep.deep is None or now - ep.deep.at >= self.settings.health_deep_s
        suspicious = quick.state in ("failed", "wedged") and (
            prev is None or prev.state != "wedged"
        )
        if quick.state != "down" and (due or suspicious):
            ep.busy = await self._busy(client, t, quick)
            if not ep.busy:
                ep.deep = await hc.deep(client, t)
                await self._publish(t.name, "probed", data=msgspec.to_builtins(ep.deep))
        if ep.deep is not None and ep.deep.at >= now:  # this round's deep probe decides
            if ep.deep.state == "wedged":
                ep.state, ep.error = "wedged", ep.deep.error
            elif ep.deep.state == "idle" and ep.state == "up":
                ep.state = "idle"
        elif prev is not None and prev.state == "wedged" and quick.state != "ok":
            ep.state = "wedged"  # still wedged until a deep probe or a healthy answer says not
        if ep.state in AVAILABLE and (prev is None or prev.state != ep.state):
            ep.started_at = now  # came up, or a model appeared (idle → up): grace again
        if ep.state == "wedged" and ep.deep is not None and ep.deep.at >= now:
            await self._maybe_restart(ep, now)
        await self._store(ep, prev)

    async def _busy(self, client: httpx.AsyncClient, t: hc.Target, quick: c.DeepProbe) -> bool:
        """A job in flight on the host (the executor's consumer has a command unacked), or a
        healthy vLLM serving requests right now."""
        with contextlib.suppress(TimeoutError, nats.errors.Error, nats.js.errors.Error):
            info = await self.bus.js.consumer_info(c.CMD_STREAM, c.host_consumer(t.host))
            if (info.num_ack_pending or 0) > 0:
                return True
        return quick.state == "ok" and await hc.requests_running(client, t) > 0

    async def _maybe_restart(self, ep: c.EndpointHealth, now: float) -> None:
        locked = False
        if ep.kind == "llm":
            with contextlib.suppress(Exception):
                locked = bool((await swaplock.status(self.bus)).get("held"))
        go, reason = restart_decision(self.settings, ep, now, self.led_since, locked)
        data: dict[str, Any] = {"decision": "requested" if go else "skipped", "reason": reason,
                                "restarts_in_window": len(ep.restarts)}  # fmt: skip
        if go:
            # counted in the state before the job is queued: a leader killed in between leaves
            # a restart counted but not made, never one the next leader makes again
            ep.restarts.append(now)
            await self.bus.state.put(c.endpoint_state_key(ep.name), c.encode(ep))
            try:
                job = await self._submit_restart(ep)
                data.update(job_id=job.id, restarts_in_window=len(ep.restarts))
            except SparkError as exc:
                ep.restarts.pop()
                data.update(decision="failed", reason=f"{exc.code}: {exc.message}"[:300])
        await self._publish(ep.name, "restart", message=data["reason"], data=data)

    async def _submit_restart(self, ep: c.EndpointHealth) -> c.JobRecord:
        if ep.kind == "llm":
            job, _ = await jobs.submit(self.bus, self.settings, ep.host, "restart", {},
                                       requested_by="health")  # fmt: skip
            return job
        svc = self._services[ep.name]
        args = {"name": ep.name, "op": "restart", "service": msgspec.to_builtins(svc)}
        job, _ = await jobs.submit(self.bus, self.settings, ep.host, "service", args,
                                   timeout_s=svc.start_timeout_s + 600.0,
                                   requested_by="health")  # fmt: skip
        return job

    async def _store(self, ep: c.EndpointHealth, prev: c.EndpointHealth | None) -> None:
        was = None if prev is None else prev.state in AVAILABLE
        now_up = ep.state in AVAILABLE
        changed = prev is None or prev.state != ep.state
        if changed:
            ep.since = ep.checked_at
        await self.bus.state.put(c.endpoint_state_key(ep.name), c.encode(ep))
        if ep.state in ("disabled", "unknown"):
            return
        if was is None or was != now_up:
            kind = "up" if now_up else "down"
            await self._publish(ep.name, kind, message=ep.error,
                                data={"state": ep.state, "previous": prev.state if prev else None,
                                      "host": ep.host})  # fmt: skip

    async def _publish(self, endpoint: str, kind: str, message: str | None = None,
                       data: Any = None) -> None:  # fmt: skip
        event = c.Event(kind=kind, ts=c.now(), worker=self.worker, message=message, data=data)
        await self.bus.publish_event(c.evt_service(endpoint, kind), event)


def base_url(host: HostConfig, port: int) -> str:
    address = "127.0.0.1" if host.transport == "local" else host.address
    if ":" in address and not address.startswith("["):
        address = f"[{address}]"
    return f"http://{address}:{port}"


async def get_endpoint(bus: Bus, name: str) -> c.EndpointHealth | None:
    try:
        entry = await bus.state.get(c.endpoint_state_key(name))
    except nats.js.errors.KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        return msgspec.json.decode(entry.value, type=c.EndpointHealth)
    except msgspec.DecodeError:
        return None


async def record_host(
    bus: Bus, alias: str, result: c.ProbeResult | None, code: str | None, error: str | None,
    worker: str,
) -> None:  # fmt: skip
    """What a health probe says about a host, as a job's outcome would (workers/hosts.py):
    success is up (with the probe), failing to reach it is down, anything else says nothing."""
    if result is None and code not in UNREACHABLE_CODES:
        return
    up = result is not None
    try:
        previous = await bus.get_host_state(alias)
        t = c.now()
        await bus.put_host_state(c.HostState(
            host=alias, up=up, checked_at=t, error=None if up else error,
            probe=result if up else (previous.probe if previous else None),
        ))  # fmt: skip
        if previous is None or previous.up != up:
            kind = "up" if up else "down"
            await bus.publish_event(c.evt_host(alias, kind), c.Event(
                kind=kind, ts=t, host=alias, worker=worker, message=error))  # fmt: skip
        if up:
            await bus.publish_event(c.evt_host(alias, "probed"), c.Event(
                kind="probed", ts=t, host=alias, worker=worker,
                data=msgspec.to_builtins(result)))  # fmt: skip
    except (TimeoutError, SparkError, nats.errors.Error) as exc:
        log.warning("could not record the state of %s: %s", alias, exc)


# --- the worker ----------------------------------------------------------------------------


async def start(bus: Bus, settings: Settings, worker: str) -> Callable[[], Awaitable[None]]:
    """Start a health loop replica (it probes only while it leads); return its teardown."""
    loop = HealthLoop(bus, settings, worker)
    await loop.start()
    service = await register(bus, HEALTH_SERVICE, worker, "probes hosts and endpoints")

    async def teardown() -> None:
        await service.stop()
        await loop.stop()

    return teardown


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one health replica until SIGINT/SIGTERM (or ``stop``)."""

    async def setup(bus: Bus, worker: str) -> Callable[[], Awaitable[None]]:
        return await start(bus, settings, worker)

    await run_until_stopped(settings, "health", setup, stop)
