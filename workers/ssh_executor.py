"""The SSH executor worker: runs host commands from SPARK_CMD (see ``workers.executor``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app import contracts as c
from app.bus import Bus
from app.config import Settings
from workers.executor import Executor
from workers.runtime import register, run_until_stopped


async def start(bus: Bus, settings: Settings, worker: str) -> Callable[[], Awaitable[None]]:
    """Start an executor on a connected bus; return its teardown."""
    executor = Executor(bus, settings, worker)
    await executor.start()
    service = await register(
        bus,
        c.EXECUTOR_SERVICE,
        worker,
        "runs host commands over SSH",
        hosts=",".join(settings.aliases),
    )

    async def teardown() -> None:
        await service.stop()
        await executor.stop()

    return teardown


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    """Run one executor replica until SIGINT/SIGTERM (or ``stop``)."""

    async def setup(bus: Bus, worker: str) -> Callable[[], Awaitable[None]]:
        return await start(bus, settings, worker)

    await run_until_stopped(settings, "ssh-executor", setup, stop)
