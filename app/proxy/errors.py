"""The proxy's errors: each a SparkError (``{"error","code"}``), some with response headers
(``Retry-After``) that the /v1 router's exception handler adds."""

from __future__ import annotations

from app.errors import HostError, NotFound, SparkError


class ProxyError(SparkError):
    """Base of the proxy's errors; ``headers`` go on the error response."""

    headers: dict[str, str] = {}


class UnknownModel(ProxyError, NotFound):
    code = "UNKNOWN_MODEL"


class ModelNotLoaded(ProxyError, NotFound):
    """In the catalog, not running anywhere, and not ``on_demand``."""

    code = "MODEL_NOT_LOADED"


class UpstreamUnreachable(ProxyError, HostError):
    code = "UPSTREAM_UNREACHABLE"
    status = 502


class UpstreamTimeout(ProxyError, HostError):
    code = "UPSTREAM_TIMEOUT"
    status = 504


class Busy(ProxyError):
    """Try again later: queue full, a speech upstream failing, a swap that failed or is
    blocked by the swap lock. ``retry_after`` seconds go into ``Retry-After``."""

    code = "UNAVAILABLE"
    status = 503

    def __init__(self, message: str, *, retry_after: float, code: str | None = None):
        super().__init__(message, code=code)
        self.headers = {"Retry-After": str(max(1, round(retry_after)))}


class QueueFull(Busy):
    code = "QUEUE_FULL"


class SwapFailed(Busy):
    code = "SWAP_FAILED"
