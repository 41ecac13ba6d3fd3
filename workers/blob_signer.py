"""The blob-signer worker. For now it only joins the service registry; the signing endpoint
(``spark.cmd.blob.sign.<namespace>``) arrives with the signer issue."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from app import contracts as c
from app.bus import Bus
from app.config import Settings
from workers.runtime import register, run_until_stopped


async def start(bus: Bus, settings: Settings, worker: str) -> Callable[[], Awaitable[None]]:
    service = await register(bus, c.SIGNER_SERVICE, worker, "presigns S3 URLs per namespace")
    return service.stop


async def serve(settings: Settings, stop: asyncio.Event | None = None) -> None:
    async def setup(bus: Bus, worker: str) -> Callable[[], Awaitable[None]]:
        return await start(bus, settings, worker)

    await run_until_stopped(settings, "blob-signer", setup, stop)
