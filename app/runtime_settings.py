"""Runtime settings: the few settings the /settings page edits, kept in the ``spark_settings``
bucket (``runtime.<name>``) and applied live by every process that watches it.

Each process loads its settings (file, environment) once; ``follow`` then watches
``runtime.>`` and sets the value on that process's ``Settings`` object (a deleted key puts the
file/environment value back). Only settings whose readers look at ``settings.<name>`` each time
they act are listed here, so setting the attribute is enough; ``on_change`` callbacks reach the
rest (the proxy's queue limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import nats.errors
import nats.js.errors

from app import contracts as c
from app.bus import Bus
from app.config import Settings
from app.errors import BadRequest

log = logging.getLogger(__name__)


class Spec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    type: Literal["float", "int", "bool"]
    lo: float = 0.0
    hi: float = 0.0
    unit: str = ""
    doc: str = ""
    reader: str = ""


SPECS: dict[str, Spec] = {
    s.name: s
    for s in (
        Spec(name="health_poll_s", type="float", lo=1, hi=3600, unit="s",
             doc="How often the health loop probes every host and reads every health URL.",
             reader="health worker (its next wait)"),
        Spec(name="health_auto_restart", type="bool",
             doc="Restart a wedged endpoint's container automatically.",
             reader="health worker (its next decision)"),
        Spec(name="health_restart_max", type="int", lo=0, hi=100,
             doc="At most this many automatic restarts of one endpoint per restart window.",
             reader="health worker (its next decision)"),
        Spec(name="proxy_queue_limit", type="int", lo=0, hi=100_000,
             doc="Requests that may wait for an on-demand model swap at once (more: 503).",
             reader="every web front's /v1 proxy (its next request)"),
    )
}  # fmt: skip
"""The runtime settings, in page order."""

Value = float | int | bool


class Stored(msgspec.Struct, kw_only=True):
    """The value of ``runtime.<name>`` in the bucket."""

    value: float | int | bool
    by: str | None = None
    at: float = 0.0


def spec(name: str) -> Spec:
    found = SPECS.get(name)
    if found is None:
        raise BadRequest(f"{name[:64]!r} is not a runtime setting", code="UNKNOWN_SETTING")
    return found


def parse(name: str, raw: Any) -> Value:
    """A form's (or the bucket's) value for ``name``, checked; BadRequest names the setting."""
    s = spec(name)
    text = str(raw).strip().lower() if not isinstance(raw, bool) else ""
    if s.type == "bool":
        if isinstance(raw, bool):
            return raw
        if text in ("true", "on", "1", "yes"):
            return True
        if text in ("false", "off", "0", "no"):
            return False
        raise BadRequest(f"{name}: expected true or false", code="BAD_SETTING")
    try:
        number = float(raw) if not isinstance(raw, bool) else math.nan
    except (TypeError, ValueError):
        raise BadRequest(f"{name}: expected a number", code="BAD_SETTING") from None
    if not math.isfinite(number):
        raise BadRequest(f"{name}: expected a number", code="BAD_SETTING")
    if s.type == "int" and number != int(number):
        raise BadRequest(f"{name}: expected a whole number", code="BAD_SETTING")
    if not s.lo <= number <= s.hi:
        raise BadRequest(f"{name}: must be {s.lo:g}..{s.hi:g}{s.unit and ' ' + s.unit}",
                         code="BAD_SETTING")  # fmt: skip
    return int(number) if s.type == "int" else number


async def read_all(bus: Bus) -> dict[str, Stored]:
    """What the bucket holds now (bad or unknown entries left out)."""
    kv = bus.kv[c.SETTINGS_BUCKET]
    out: dict[str, Stored] = {}
    for name in SPECS:
        try:
            entry = await kv.get(c.runtime_setting_key(name))
        except nats.js.errors.KeyNotFoundError:
            continue
        stored = _decode(name, entry.value)
        if stored is not None:
            out[name] = stored
    return out


async def store(bus: Bus, name: str, value: Value, by: str | None) -> None:
    record = Stored(value=parse(name, value), by=by, at=c.now())
    await bus.kv[c.SETTINGS_BUCKET].put(c.runtime_setting_key(name), c.encode(record))


async def clear(bus: Bus, name: str) -> None:
    """Back to the file/environment value on every replica."""
    spec(name)
    await bus.kv[c.SETTINGS_BUCKET].delete(c.runtime_setting_key(name))


def _decode(name: str, data: bytes | None) -> Stored | None:
    try:
        stored = msgspec.json.decode(data or b"", type=Stored)
        stored.value = parse(name, stored.value)
        return stored
    except (msgspec.DecodeError, BadRequest):
        log.warning("runtime setting %s: bad value in the bucket, ignored", name)
        return None


Listener = Callable[[str, Value], None]


class Follower:
    """Applies the bucket's runtime settings to one process's Settings, live."""

    def __init__(self, settings: Settings, listeners: list[Listener] | None = None) -> None:
        self.settings = settings
        self.base: dict[str, Value] = {n: getattr(settings, n) for n in SPECS}
        self.listeners = listeners or []
        self.applied: dict[str, Stored] = {}
        self.ready = asyncio.Event()

    def apply(self, name: str, stored: Stored | None) -> None:
        value = self.base[name] if stored is None else stored.value
        if stored is None:
            self.applied.pop(name, None)
        else:
            self.applied[name] = stored
        if getattr(self.settings, name) != value:
            log.info("runtime setting %s = %r", name, value)
        setattr(self.settings, name, value)
        for listener in self.listeners:
            try:
                listener(name, value)
            except Exception:
                log.exception("runtime setting listener for %s", name)

    async def run(self, bus: Bus) -> None:
        """Watch ``runtime.>`` until cancelled (re-watching after a bus error)."""
        prefix = f"{c.RUNTIME_KEY_PREFIX}."
        if c.SETTINGS_BUCKET not in bus.kv:  # a bus without the buckets: nothing to follow
            self.ready.set()
            return
        while True:
            watcher = None
            try:
                watcher = await bus.kv[c.SETTINGS_BUCKET].watch(f"{prefix}>")
                async for entry in watcher:
                    if entry is None:  # the initial values are all in
                        self.ready.set()
                        continue
                    name = entry.key.removeprefix(prefix)
                    if name not in SPECS:
                        continue
                    deleted = entry.operation in ("DEL", "PURGE")
                    self.apply(name, None if deleted else _decode(name, entry.value))
            except asyncio.CancelledError:
                raise
            except (TimeoutError, nats.errors.Error) as exc:
                log.warning("runtime settings not watched: %s; retrying", exc)
            finally:
                if watcher is not None:
                    with contextlib.suppress(Exception):
                        await watcher.stop()
            await asyncio.sleep(5)


@contextlib.asynccontextmanager
async def following(bus: Bus, settings: Settings, listeners: list[Listener] | None = None) -> Any:
    """Run a Follower for the duration of the block; yields it."""
    follower = Follower(settings, listeners)
    task = asyncio.create_task(follower.run(bus))
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.ready.wait(), 5)
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
