"""Per-host runners for the executor, and the host state each job's outcome implies."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats.errors

from app import contracts as c
from app.bus import Bus
from app.config import HostConfig, Settings
from app.errors import SparkError
from workers.runner import ShellRunner
from workers.transport import LocalTransport, SshTransport, Transport

log = logging.getLogger(__name__)

UNREACHABLE_CODES = frozenset({"HOST_UNREACHABLE", "HOST_KEY_REFUSED", "SSH_AUTH_FAILED"})


class HostRunners:
    """One transport (one pooled connection) and one shell runner per host, made lazily."""

    def __init__(self, settings: Settings, on_down: Callable[[str, str], Awaitable[None]]):
        self.settings = settings
        self.on_down = on_down
        self._runners: dict[str, ShellRunner] = {}
        self._transports: dict[str, Transport] = {}

    def get(self, host: HostConfig) -> ShellRunner:
        runner = self._runners.get(host.alias)
        if runner is None:
            transport = self._transport(host)
            self._transports[host.alias] = transport
            runner = self._runners[host.alias] = ShellRunner(transport)
        return runner

    def _transport(self, host: HostConfig) -> Transport:
        if host.transport == "local":
            return LocalTransport()

        def lost(reason: str) -> Awaitable[None]:
            return self.on_down(host.alias, reason)

        return SshTransport(host, self.settings, on_disconnect=lost)

    async def close(self) -> None:
        for runner in self._runners.values():
            with contextlib.suppress(Exception):
                await runner.close()
        for transport in self._transports.values():
            with contextlib.suppress(Exception):
                await transport.close()


_FETCH = object()


async def host_outcome(
    bus: Bus,
    job: c.JobRecord,
    result: Any,
    code: str | None,
    error: str | None,
    previous: Any = _FETCH,
) -> list[tuple[str, c.Event]]:
    """Write the host state a finished job implies; return the host events to publish after
    the job's final event. Only success (up) or failing to reach the host (down) says
    anything about the host: a timeout or a failed command leaves its state alone.
    ``previous``: the host state read while the job ran (else it is read here); given, the
    state's write is this coroutine's first message on the connection."""
    if code in UNREACHABLE_CODES:
        up = False
    elif code is None:
        up = True
    else:
        return []
    try:
        if previous is _FETCH:
            previous = await bus.get_host_state(job.host)
        t = c.now()
        probe = previous.probe if previous else None
        if job.action == "probe" and up and result is not None:
            probe = msgspec.convert(result, type=c.ProbeResult)
        await bus.put_host_state(
            c.HostState(
                host=job.host, up=up, checked_at=t, probe=probe, error=None if up else error
            )
        )
    except (TimeoutError, SparkError, nats.errors.Error) as exc:
        log.warning("could not record the state of %s: %s", job.host, exc)
        return []
    events = []
    if previous is None or previous.up != up:
        kind = "up" if up else "down"
        events.append((kind, c.Event(kind=kind, ts=t, host=job.host, job_id=job.id, message=error)))
    if job.action == "probe" and up:
        events.append(
            ("probed", c.Event(kind="probed", ts=t, host=job.host, job_id=job.id, data=result))
        )
    return [(c.evt_host(job.host, kind), ev) for kind, ev in events]


async def mark_down(bus: Bus, alias: str, reason: str, worker: str) -> None:
    """The connection to a host was lost (keepalive or reset): state down, and a down event."""
    try:
        previous = await bus.get_host_state(alias)
        t = c.now()
        await bus.put_host_state(
            c.HostState(
                host=alias,
                up=False,
                checked_at=t,
                error=reason,
                probe=previous.probe if previous else None,
            )
        )
        if previous is None or previous.up:
            event = c.Event(kind="down", ts=t, host=alias, worker=worker, message=reason)
            await bus.publish_event(c.evt_host(alias, "down"), event)
    except (TimeoutError, SparkError, nats.errors.Error) as exc:
        log.warning("could not record %s down: %s", alias, exc)
