"""What every worker shares: connect to the bus, register as a NATS micro service, run until
asked to stop (SIGINT/SIGTERM), then drain."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import Awaitable, Callable

from nats.micro import add_service
from nats.micro.service import Service

from app import contracts as c
from app import runtime_settings
from app.bus import Bus, connect
from app.config import Settings

log = logging.getLogger(__name__)


def worker_name(settings: Settings, kind: str) -> str:
    """A name unique per replica, used in job records and events."""
    return settings.worker_name or f"{kind}-{socket.gethostname()}-{os.getpid()}"


async def register(bus: Bus, name: str, worker: str, description: str, **meta: str) -> Service:
    """Join the micro-service registry so ``$SRV.PING/INFO/STATS`` discover this replica."""
    return await add_service(
        bus.nc,
        name=name,
        version=c.SERVICE_VERSION,
        description=description,
        metadata={"worker": worker, **meta},
    )


async def run_until_stopped(
    settings: Settings,
    kind: str,
    setup: Callable[[Bus, str], Awaitable[Callable[[], Awaitable[None]]]],
    stop: asyncio.Event | None = None,
) -> None:
    """Connect, call ``setup(bus, worker)`` (which returns its own teardown), wait for a signal."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    worker = worker_name(settings, kind)
    connecting = asyncio.create_task(connect(settings, name=worker))
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait({connecting, stopped}, return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if not connecting.done():  # asked to stop while NATS was still unreachable
        connecting.cancel()
        return
    bus = connecting.result()
    async with runtime_settings.following(bus, settings):  # the /settings page, live
        teardown = await setup(bus, worker)
        log.info("%s ready", worker)
        try:
            await stop.wait()
        finally:
            await teardown()
    await bus.close()
