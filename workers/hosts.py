"""Per-host runners for the executor, and the host state each job's outcome implies."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

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


async def record_host_outcome(
    bus: Bus, job: c.JobRecord, result: Any, code: str | None, error: str | None
) -> None:
    """A finished job says whether the host answered: keep the state bucket and events in step."""
    reachable = code not in UNREACHABLE_CODES
    if code and reachable and job.action != "probe":
        return  # the host answered but the command failed: nothing learnt about the host
    previous = await bus.get_host_state(job.host)
    t = c.now()
    probe = None
    if job.action == "probe" and result is not None:
        probe = msgspec.convert(result, type=c.ProbeResult)
    elif previous is not None:
        probe = previous.probe
    up = reachable and code is None
    state = c.HostState(
        host=job.host, up=up, checked_at=t, probe=probe, error=error if not up else None
    )
    try:
        await bus.put_host_state(state)
        kinds = ["probed"] if probe is not None and job.action == "probe" and up else []
        if previous is None or previous.up != up:
            kinds.insert(0, "up" if up else "down")
        for kind in kinds:
            event = c.Event(
                kind=kind,
                ts=t,
                host=job.host,
                job_id=job.id,
                message=None if up else error,
                data=result if kind == "probed" else None,
            )
            await bus.publish_event(c.evt_host(job.host, kind), event)
    except SparkError as exc:
        log.warning("could not record the state of %s: %s", job.host, exc)
