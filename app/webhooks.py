"""Swap webhooks: a JSON POST ``{event: swap_complete|swap_failed, …}`` signed with
``X-Spark-Signature: sha256=<hex HMAC-SHA256 of the body>``, retried with exponential backoff on
connection errors and 5xx. Callers send it outside the swap lock.

The secret and the URL never appear in the outcome or in a log line (a URL may carry a key).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Mapping
from typing import Any, Literal

import httpx
import msgspec

from app.contracts import SERVICE_VERSION

log = logging.getLogger(__name__)

EVENTS = ("swap_complete", "swap_failed")
SIGNATURE_HEADER = "X-Spark-Signature"
EVENT_HEADER = "X-Spark-Event"
MAX_BACKOFF_S = 60.0


class Delivery(msgspec.Struct, kw_only=True):
    """How a delivery ended: ``attempts`` made, the last HTTP ``status`` (None when no answer)
    and, when it failed, a short ``error`` (an exception class or ``HTTP 503``)."""

    outcome: Literal["delivered", "failed"]
    attempts: int
    status: int | None = None
    error: str | None = None

    @property
    def delivered(self) -> bool:
        return self.outcome == "delivered"


def sign(body: bytes, secret: str) -> str:
    """``sha256=<hex HMAC-SHA256 of body keyed by secret>``, the X-Spark-Signature value."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, signature: str | None) -> bool:
    """For receivers: does ``signature`` sign ``body``? (constant-time)."""
    return signature is not None and hmac.compare_digest(sign(body, secret), signature)


def _retryable(status: int) -> bool:
    return status >= 500 or status == 429


def _where(url: str) -> str:
    """Host of the URL for log lines: no path, query or credentials."""
    try:
        return httpx.URL(url).host or "?"
    except httpx.InvalidURL:
        return "?"


async def deliver(
    url: str,
    event: Mapping[str, Any],
    secret: str,
    *,
    attempts: int = 5,
    backoff_s: float = 1.0,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
) -> Delivery:
    """POST ``event`` to ``url``, up to ``attempts`` times; before try n+1 wait
    ``backoff_s * 2**(n-1)`` (at most MAX_BACKOFF_S). Delivery problems never raise: the
    outcome says what happened."""
    if event.get("event") not in EVENTS:
        raise ValueError(f"event: must be one of {', '.join(EVENTS)}")
    if attempts < 1:
        raise ValueError("attempts: must be at least 1")
    body = msgspec.json.encode(event)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"spark-control/{SERVICE_VERSION}",
        SIGNATURE_HEADER: sign(body, secret),
        EVENT_HEADER: str(event["event"]),
    }
    if client is None:
        async with httpx.AsyncClient(timeout=timeout_s) as own:
            return await _attempts(own, url, body, headers, attempts, backoff_s)
    return await _attempts(client, url, body, headers, attempts, backoff_s)


async def _attempts(
    client: httpx.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    attempts: int,
    backoff_s: float,
) -> Delivery:
    status: int | None = None
    error = "not sent"
    for attempt in range(1, attempts + 1):
        if attempt > 1:
            await asyncio.sleep(min(backoff_s * 2 ** (attempt - 2), MAX_BACKOFF_S))
        try:
            resp = await client.post(url, content=body, headers=headers)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as exc:
            return _failed(url, attempt, None, type(exc).__name__)
        except httpx.TransportError as exc:  # refused, reset, timed out: try again
            status, error = None, type(exc).__name__
            continue
        status = resp.status_code
        if 200 <= status < 300:
            log.info("webhook delivered to %s (attempt %d)", _where(url), attempt)
            return Delivery(outcome="delivered", attempts=attempt, status=status)
        error = f"HTTP {status}"
        if not _retryable(status):
            return _failed(url, attempt, status, error)
    return _failed(url, attempts, status, error)


def _failed(url: str, attempts: int, status: int | None, error: str) -> Delivery:
    log.warning("webhook to %s failed after %d attempt(s): %s", _where(url), attempts, error)
    return Delivery(outcome="failed", attempts=attempts, status=status, error=error)
