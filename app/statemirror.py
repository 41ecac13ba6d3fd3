"""The ``spark_state`` bucket held in memory by one KV watch, for pages that show every host
at once: reading 50 hosts' state, model and endpoints is then a dictionary lookup each instead of
150 round-trips. Values trail a write by the watch's delivery (milliseconds); code that must see
its own write reads the bucket instead."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, TypeVar

import msgspec

from app import contracts as c
from app.bus import Bus

log = logging.getLogger(__name__)
T = TypeVar("T")


class StateMirror:
    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.ready = asyncio.Event()
        """Set once the bucket's current values have all arrived."""

    async def follow(self, bus: Bus) -> None:
        """Keep the mirror current until cancelled (a broken watch is opened again)."""
        while True:
            try:
                watcher = await bus.state.watchall()
                async for entry in watcher:
                    if entry is None:  # the current values have all been delivered
                        self.ready.set()
                    elif entry.operation in ("DEL", "PURGE") or entry.value is None:
                        self.values.pop(entry.key, None)
                    else:
                        self.values[entry.key] = entry.value
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.debug("state mirror: %s; watching again", type(exc).__name__)
                await asyncio.sleep(1.0)

    def _get(self, key: str, kind: type[T]) -> T | None:
        raw = self.values.get(key)
        if not raw:
            return None
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            return msgspec.json.decode(raw, type=kind)
        return None

    def host(self, alias: str) -> c.HostState | None:
        return self._get(c.host_state_key(alias), c.HostState)

    def model(self, alias: str) -> c.ModelState | None:
        return self._get(c.model_state_key(alias), c.ModelState)

    def endpoint(self, name: str) -> c.EndpointHealth | None:
        return self._get(c.endpoint_state_key(name), c.EndpointHealth)


def of(state: Any) -> StateMirror | None:
    """The app's mirror once it holds the whole bucket, else None (read the bucket)."""
    mirror = getattr(state, "mirror", None)
    return mirror if isinstance(mirror, StateMirror) and mirror.ready.is_set() else None
