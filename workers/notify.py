"""Swap webhooks: each outcome POSTed, signed, to every configured URL, in the background and
after the job has ended (so a slow receiver never holds the host or the lock), with retries."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app import webhooks
from app.config import Settings

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, settings: Settings):
        self.urls = list(settings.webhook_urls)
        self.secret = settings.webhook_secret or ""
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, event: dict[str, Any]) -> None:
        """Queue ``event`` (``{"event": "swap_complete" | "swap_failed", …}``) for every URL."""
        for url in self.urls:
            task = asyncio.create_task(self._deliver(url, event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _deliver(self, url: str, event: dict[str, Any]) -> None:
        outcome = await webhooks.deliver(url, event, self.secret)
        if outcome.outcome != "delivered":  # the URL may carry a token: log its position only
            index = self.urls.index(url)
            log.warning("webhook %d: %s after %d attempts", index, outcome.error, outcome.attempts)

    async def close(self, grace_s: float = 5.0) -> None:
        """Give pending deliveries a moment, then drop them."""
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
