"""The project's error tree. Boundary modules translate library errors into these, once,
chained ``from exc``; one mapper turns them into HTTP statuses and ``failed`` events.

Messages are for people and never carry secrets (keys, tokens, passwords, redacted values).
"""

from __future__ import annotations

import re


class SparkError(Exception):
    """Base: a failure with a stable machine code and an HTTP status."""

    code = "INTERNAL"
    status = 500

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        if status:
            self.status = status


class BadRequest(SparkError):
    code = "BAD_REQUEST"
    status = 400


class NotFound(SparkError):
    code = "NOT_FOUND"
    status = 404


class UnknownHost(NotFound):
    code = "UNKNOWN_HOST"


class UnknownAction(BadRequest):
    code = "UNKNOWN_ACTION"


class Conflict(SparkError):
    code = "CONFLICT"
    status = 409


class BusUnavailable(SparkError):
    """NATS is unreachable or did not acknowledge in time."""

    code = "BUS_UNAVAILABLE"
    status = 503


class HostError(SparkError):
    """Reaching or running on a GPU host failed."""

    code = "HOST_ERROR"
    status = 502


class HostUnreachable(HostError):
    code = "HOST_UNREACHABLE"


class HostKeyRefused(HostError):
    """The host's key is unknown or changed; recording it is an explicit operator action."""

    code = "HOST_KEY_REFUSED"


class AuthFailed(HostError):
    code = "SSH_AUTH_FAILED"


class CommandTimeout(HostError):
    code = "TIMEOUT"
    status = 504


class Cancelled(SparkError):
    code = "CANCELLED"
    status = 409


class Unauthorized(SparkError):
    """No identity, or one we do not know (an unknown bearer token)."""

    code = "UNAUTHORIZED"
    status = 401


class Forbidden(SparkError):
    """A known caller asking for something outside what it may do (OUTSIDE_NAMESPACE, …)."""

    code = "FORBIDDEN"
    status = 403


class StoreUnavailable(SparkError):
    """The object store (S3) is unreachable or refused the signer's own call."""

    code = "STORE_UNAVAILABLE"
    status = 503


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_text(value: object, field: str, limit: int, *, required: bool = False) -> str | None:
    """A free-text field of a request (holder, note, description, …): a string within
    ``limit`` characters without control characters; BadRequest names the field, never the
    value. None when absent and not required."""
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        raise BadRequest(f"{field}: must be a non-empty string")
    if len(value) > limit:
        raise BadRequest(f"{field}: must be at most {limit} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{field}: must not contain control characters")
    return value


def error_body(exc: SparkError) -> dict[str, str]:
    return {"error": exc.message, "code": exc.code}
