"""The cross-site guard (REFERENCE §1): a state-changing request to a control endpoint whose
``Origin`` (or, without one, ``Referer``) names another host:port than the one it was sent to
(its ``Host`` header) came from another site's page, and is refused. Machine endpoints are
exempt; a client that sends neither header (curl, scripts) passes."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import urlsplit

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
EXEMPT = ("/v1/", "/api/audio/", "/api/v1/blob/", "/scrub", "/rehydrate", "/api/health-event")
"""Machine endpoints, exempt from the guard (see ``under``)."""
DEFAULT_PORTS = {"http": 80, "https": 443}


def under(path: str, entries: tuple[str, ...]) -> bool:
    """``path`` is one of ``entries``: one ending in ``/`` is a prefix (and its bare folder),
    any other the path itself or its sub-paths (``/scrub`` is not ``/scrubber``)."""
    for entry in entries:
        if entry.endswith("/"):
            if path.startswith(entry) or path == entry[:-1]:
                return True
        elif path == entry or path.startswith(entry + "/"):
            return True
    return False


def is_exempt(path: str) -> bool:
    return under(path, EXEMPT)


def _same_host(source: str, host_header: str) -> bool:
    """``source`` (an Origin or Referer URL) names the host:port of ``host_header``; a port left
    out on either side is the default of the source's scheme (a TLS-terminating proxy passes
    ``Host: example.com`` for ``https://example.com``)."""
    try:
        src = urlsplit(source)
        if src.scheme not in DEFAULT_PORTS or not src.hostname:
            return False  # "null", a file: page, garbage: not this site
        default = DEFAULT_PORTS[src.scheme]
        served = urlsplit(f"//{host_header}")
        if not served.hostname:
            return False
        return (src.hostname, src.port or default) == (served.hostname, served.port or default)
    except ValueError:  # a port that is not a number, a bad IPv6 literal
        return False


def refuses(method: str, path: str, headers: Mapping[str, str]) -> bool:
    """True when this request must be refused as cross-site (``headers`` lower-case keyed)."""
    if method.upper() not in STATE_CHANGING or is_exempt(path):
        return False
    source = headers.get("origin") or headers.get("referer")
    if not source:
        return False
    return not _same_host(source, headers.get("host", ""))
