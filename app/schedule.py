"""The schedule registry: a list of the external jobs that use the GPU hosts (cron lines kept
elsewhere, batch runs, …), so an operator sees them beside the swap lock. Documentation only:
nothing here runs anything. Entries live in the ``spark_settings`` bucket as ``schedule.<id>``.
"""

from __future__ import annotations

import logging
import re
import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors

from app import contracts as c
from app.bus import Bus
from app.errors import BadRequest, Conflict, NotFound, check_text

log = logging.getLogger(__name__)

MAX_ENTRIES = 500
LIMITS = {"name": 100, "cron": 100, "description": 2000, "owner": 100, "model": 200, "host": 100}
_ID = re.compile(r"^[a-f0-9]{12}$")


class UnknownSchedule(NotFound):
    code = "UNKNOWN_SCHEDULE"


class ScheduleEntry(msgspec.Struct, kw_only=True):
    """One registered external job; ``created_at`` is ISO-8601 UTC."""

    id: str
    name: str
    cron: str | None = None
    description: str | None = None
    owner: str | None = None
    model: str | None = None
    host: str | None = None
    created_at: str


class _Body(msgspec.Struct, kw_only=True):
    # Any: each field is checked below with a message naming it; unknown fields are ignored,
    # as the earlier dashboard's clients may send more
    name: Any = None
    cron: Any = None
    description: Any = None
    owner: Any = None
    model: Any = None
    host: Any = None


def _text(value: object, field: str, *, required: bool = False) -> str | None:
    return check_text(value, field, LIMITS[field], required=required)


def decode_entry(raw: bytes) -> ScheduleEntry:
    """A new entry from a POST body, with a fresh id; BadRequest names the field at fault."""
    try:
        body = msgspec.json.decode(raw or b"{}", type=_Body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"body: {exc}", code="BAD_JSON") from exc
    name = _text(body.name, "name", required=True)
    assert name is not None
    return ScheduleEntry(
        id=secrets.token_hex(6),
        name=name,
        cron=_text(body.cron, "cron"),
        description=_text(body.description, "description"),
        owner=_text(body.owner, "owner"),
        model=_text(body.model, "model"),
        host=_text(body.host, "host"),
        created_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
    )


async def list_entries(bus: Bus) -> list[ScheduleEntry]:
    """Every entry, oldest first (one watch over ``schedule.>``: keys and values together)."""
    watcher = await bus.kv[c.SETTINGS_BUCKET].watch(
        f"{c.SCHEDULE_KEY_PREFIX}.>", ignore_deletes=True
    )
    found: list[ScheduleEntry] = []
    try:
        while (update := await watcher.updates(timeout=5.0)) is not None:
            try:
                found.append(msgspec.json.decode(update.value or b"", type=ScheduleEntry))
            except msgspec.DecodeError:
                log.warning("schedule entry %s unreadable; skipped", update.key)
    finally:
        await watcher.stop()
    found.sort(key=lambda e: (e.created_at, e.id))
    return found


async def _get(bus: Bus, entry_id: str) -> ScheduleEntry | None:
    try:
        entry = await bus.kv[c.SETTINGS_BUCKET].get(c.schedule_key(entry_id))
    except nats.js.errors.KeyNotFoundError:
        return None
    try:
        return msgspec.json.decode(entry.value or b"", type=ScheduleEntry)
    except msgspec.DecodeError:
        return None


async def add(bus: Bus, entry: ScheduleEntry) -> ScheduleEntry:
    if len(await list_entries(bus)) >= MAX_ENTRIES:
        raise Conflict(
            f"the schedule registry is full ({MAX_ENTRIES} entries)", code="SCHEDULE_FULL"
        )
    await bus.kv[c.SETTINGS_BUCKET].create(c.schedule_key(entry.id), c.encode(entry))
    return entry


async def remove(bus: Bus, entry_id: str) -> ScheduleEntry:
    """Delete one entry and return it; UnknownSchedule (404) when there is none."""
    found = await _get(bus, entry_id) if _ID.match(entry_id) else None
    if found is None:
        raise UnknownSchedule("no such schedule entry")
    await bus.kv[c.SETTINGS_BUCKET].delete(c.schedule_key(entry_id))
    return found
