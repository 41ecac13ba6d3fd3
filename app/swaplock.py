"""The swap lock: one reservation of the GPU hosts, ``{holder, ttl_seconds, note}``, kept in the
``spark_locks`` bucket so every web replica sees the same one.

Whoever acquires it gets a token (returned once, stored only as its SHA-256); extending,
releasing and swapping while it is held need that token. An expired lock counts as free. Every
write is a compare-and-set on the key's revision, so two acquirers can never both win.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import secrets
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.js.errors

from app import contracts as c
from app.bus import Bus
from app.errors import BadRequest, Conflict, SparkError, check_text

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 900
MIN_TTL_S, MAX_TTL_S = 1, 86400
MAX_HOLDER = 128
MAX_NOTE = 1000
MAX_TOKEN = 256
TOKEN_HEADER = "X-Lock-Token"
_CAS_ROUNDS = 8
_WRONG_LAST = (10071, 10164)  # JetStream: expected last subject sequence did not match


class LockHeld(Conflict):
    """Someone else holds the lock: 409, naming the holder and the seconds left."""

    code = "LOCK_HELD"

    def __init__(self, holder: str, seconds_remaining: int):
        super().__init__(f"swap lock is held by {holder!r} for {seconds_remaining} s more")
        self.holder = holder
        self.seconds_remaining = seconds_remaining


class Locked(SparkError):
    """The lock is held and the request did not carry its token: 423."""

    code = "LOCKED"
    status = 423


class LockRecord(msgspec.Struct, kw_only=True):
    """The stored lock. Times are Unix seconds; the token is kept only as its SHA-256."""

    holder: str
    token_sha256: str
    acquired_at: float
    expires_at: float
    note: str | None = None

    def live(self, at: float) -> bool:
        return self.expires_at > at

    def seconds_remaining(self, at: float) -> int:
        return max(0, math.ceil(self.expires_at - at))

    def opens_with(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(self.token_sha256, _digest(token))


class AcquireRequest(msgspec.Struct, kw_only=True):
    """A validated ``POST /api/swap/lock`` body."""

    holder: str
    ttl_seconds: int
    note: str | None
    token: str | None


class _AcquireBody(msgspec.Struct, kw_only=True):
    # Any: each field is checked below, with messages that name it (unknown fields are ignored,
    # as the earlier dashboard did)
    holder: Any = None
    ttl_seconds: Any = DEFAULT_TTL_S
    note: Any = None
    token: Any = None


# --- validation ----------------------------------------------------------------------------


def check_token(value: object) -> str | None:
    """A presented token (header or body): None when absent; never echoed in a message."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > MAX_TOKEN:
        raise BadRequest(f"token: must be a string of at most {MAX_TOKEN} characters")
    return value


def decode_acquire(raw: bytes) -> AcquireRequest:
    """Decode and validate an acquire body; BadRequest (400) names the field at fault."""
    try:
        body = msgspec.json.decode(raw or b"{}", type=_AcquireBody)
    except msgspec.DecodeError as exc:
        raise BadRequest("body: must be a JSON object", code="BAD_JSON") from exc
    ttl = body.ttl_seconds
    if type(ttl) is not int or not MIN_TTL_S <= ttl <= MAX_TTL_S:
        raise BadRequest(
            f"ttl_seconds: must be an integer from {MIN_TTL_S} to {MAX_TTL_S}", code="BAD_TTL"
        )
    holder = check_text(body.holder, "holder", MAX_HOLDER, required=True)
    assert holder is not None
    return AcquireRequest(
        holder=holder,
        ttl_seconds=ttl,
        note=check_text(body.note, "note", MAX_NOTE),
        token=check_token(body.token),
    )


def token_from_body(raw: bytes) -> str | None:
    """The ``token`` of an optional JSON body (a DELETE may carry one)."""
    if not raw.strip():
        return None
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise BadRequest("body: must be a JSON object", code="BAD_JSON") from exc
    if not isinstance(body, dict):
        raise BadRequest("body: must be a JSON object", code="BAD_JSON")
    return check_token(body.get("token"))


# --- views -------------------------------------------------------------------------------


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def view(record: LockRecord | None, at: float) -> dict[str, Any]:
    """What GET shows: never the token, nor its hash."""
    if record is None or not record.live(at):
        return {"held": False}
    return {
        "held": True,
        "holder": record.holder,
        "acquired_at": _iso(record.acquired_at),
        "expires_at": _iso(record.expires_at),
        "seconds_remaining": record.seconds_remaining(at),
        "note": record.note,
    }


# --- store -------------------------------------------------------------------------------


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def _read(bus: Bus) -> tuple[LockRecord | None, int]:
    """The stored record (None when absent, deleted or unreadable) and the revision to
    compare against when writing next (0: the key was never written)."""
    try:
        entry = await bus.kv[c.LOCKS_BUCKET].get(c.SWAP_LOCK_KEY)
    except nats.js.errors.KeyNotFoundError as exc:  # never written, or deleted (tombstone)
        return None, int(getattr(exc.entry, "revision", 0) or 0)
    revision = int(entry.revision or 0)
    try:
        return msgspec.json.decode(entry.value or b"", type=LockRecord), revision
    except msgspec.DecodeError:
        log.warning("swap lock record unreadable; treating the lock as free")
        return None, revision


async def _write(bus: Bus, record: LockRecord, revision: int) -> bool:
    """Compare-and-set; False when someone else wrote first."""
    try:
        await bus.kv[c.LOCKS_BUCKET].update(c.SWAP_LOCK_KEY, c.encode(record), last=revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        return False
    return True


async def _delete(bus: Bus, revision: int) -> bool:
    """Compare-and-delete; False when someone else wrote first."""
    try:
        await bus.kv[c.LOCKS_BUCKET].delete(c.SWAP_LOCK_KEY, last=revision)
    except nats.js.errors.APIError as exc:
        if exc.err_code in _WRONG_LAST:
            return False
        raise
    return True


def _busy() -> Conflict:
    return Conflict("swap lock changed concurrently; try again", code="LOCK_BUSY")


# --- operations --------------------------------------------------------------------------


async def status(bus: Bus) -> dict[str, Any]:
    record, _ = await _read(bus)
    return view(record, c.now())


async def acquire(bus: Bus, req: AcquireRequest) -> dict[str, Any]:
    """Take the lock (or extend it, for its holder presenting its token).

    Returns the view plus ``token``; LockHeld when another holder has it."""
    for _ in range(_CAS_ROUNDS):
        record, revision = await _read(bus)
        at = c.now()
        if record is not None and record.live(at):
            if record.holder != req.holder or not record.opens_with(req.token):
                raise LockHeld(record.holder, record.seconds_remaining(at))
            assert req.token is not None
            token = req.token
            new = msgspec.structs.replace(
                record,
                expires_at=at + req.ttl_seconds,
                note=req.note if req.note is not None else record.note,
            )
            verb = "extended"
        else:
            token = secrets.token_urlsafe(24)
            new = LockRecord(
                holder=req.holder,
                token_sha256=_digest(token),
                acquired_at=at,
                expires_at=at + req.ttl_seconds,
                note=req.note,
            )
            verb = "acquired"
        if await _write(bus, new, revision):
            log.info("swap lock %s by %r for %d s", verb, req.holder, req.ttl_seconds)
            return {**view(new, at), "token": token}
    raise _busy()


async def release(bus: Bus, token: str | None, *, force: bool = False) -> dict[str, Any]:
    """Release with the token (or ``force``). Not held → ``{held: false}`` (idempotent);
    held and the token does not match → Locked."""
    for _ in range(_CAS_ROUNDS):
        record, revision = await _read(bus)
        at = c.now()
        if record is None or not record.live(at):
            return {"held": False}
        if not force and not record.opens_with(token):
            raise _locked(record, at)
        if await _delete(bus, revision):
            if force:
                log.warning("swap lock of %r force-released", record.holder)
            else:
                log.info("swap lock released by %r", record.holder)
            return {"held": False}
    raise _busy()


async def require(bus: Bus, token: str | None) -> None:
    """For the swap code: raise Locked (423) when a live lock is held and ``token`` is not its
    token. A free (or expired) lock lets anyone through."""
    record, _ = await _read(bus)
    at = c.now()
    if record is not None and record.live(at) and not record.opens_with(token):
        raise _locked(record, at)


def _locked(record: LockRecord, at: float) -> Locked:
    return Locked(
        f"swap lock is held by {record.holder!r} for {record.seconds_remaining(at)} s more; "
        f"send its token in {TOKEN_HEADER}"
    )
