"""Host actions the executor runs, and the context each one gets.

An action has ``run`` (do the work, return a result) and ``reconcile`` (called first when a
job is taken over from a replica that died mid-job: look at the host's real state and return
the result if the effect already happened, or None to run again). Probe only reads, so running
it again is safe.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from app import contracts as c
from app.config import HostConfig
from app.errors import BadRequest
from workers.probe import probe
from workers.runner import ShellRunner


@dataclass
class JobContext:
    job: c.JobRecord
    host: HostConfig
    runner: ShellRunner
    timeout_s: float
    emit: Callable[[c.Event], Awaitable[None]]
    takeover: bool = False

    async def log(self, line: str, stream: str = "stdout") -> None:
        await self.emit(c.Event(kind="log", ts=c.now(), line=line, stream=stream))

    def args_only(self, allowed: set[str]) -> dict[str, Any]:
        """The job's args, refusing any name the action does not take (BAD_ARGS)."""
        unknown = sorted(set(self.job.args) - allowed)
        if unknown:
            names = ", ".join(k[:40] for k in unknown[:5])
            raise BadRequest(f"{self.job.action}: unknown argument(s): {names}", code="BAD_ARGS")
        return self.job.args

    async def progress(self, message: str, data: Any = None) -> None:
        await self.emit(c.Event(kind="progress", ts=c.now(), message=message, data=data))


class Action(Protocol):
    async def run(self, ctx: JobContext) -> Any: ...

    async def reconcile(self, ctx: JobContext) -> Any | None: ...


class Probe:
    """Read the host's uptime, load, memory, disks, containers and GPUs; the last three may
    come from a probe at most ``max_age_s`` old (workers/probe.py)."""

    reads_only = True  # changes nothing: the executor may start it before its claim

    def __init__(self, max_age_s: float = 0.0) -> None:
        self.max_age_s = max_age_s

    async def run(self, ctx: JobContext) -> Any:
        result = await probe(
            ctx.runner, ctx.host.alias, timeout=ctx.timeout_s, max_age_s=self.max_age_s
        )
        return msgspec.to_builtins(result)

    async def reconcile(self, ctx: JobContext) -> Any | None:
        return None
