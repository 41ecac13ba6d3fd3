"""Which scope a request needs, and whether the front may start on its address.

Secure by default: on loopback no token is needed; beyond loopback the front refuses to start
without ``api_tokens`` unless the operator opts in to an open LAN (``allow_open_lan``, shown as
a banner on every page)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from app.access.guard import under
from app.access.tokens import CONTROL, INFERENCE, READ, SIGN, TokenTable
from app.config import ConfigError, Settings

OPEN = ("/static/", "/healthz", "/login", "/logout")
"""Reachable without a token: static files, the liveness probe, the sign-in form."""
INFERENCE_PATHS = ("/v1/", "/api/audio/", "/scrub", "/rehydrate", "/api/health-event")
SIGN_PATH = "/api/v1/blob/"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
COOKIE = "spark_token"
"""The dashboard's token, set by ``POST /login`` (HttpOnly, SameSite=Lax)."""


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for the open paths. ``sign`` is checked by the blob
    route itself against ``signer_tokens`` (the token names the namespace)."""
    if under(path, OPEN):
        return None
    if path.startswith(SIGN_PATH):
        return SIGN
    if under(path, INFERENCE_PATHS):
        return INFERENCE
    return READ if method.upper() in READ_METHODS else CONTROL


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a name (other than localhost) or "": it may resolve anywhere


def exposed_host(settings: Settings) -> str:
    """Where the front is reachable: ``published_host`` when a container runtime publishes
    ``bind_host`` elsewhere (compose), else ``bind_host``."""
    return settings.published_host or settings.bind_host


def check_exposure(settings: Settings) -> None:
    """ConfigError (one line) when the front would listen beyond loopback with no tokens and
    the operator has not opted in to an open LAN."""
    host = exposed_host(settings)
    if is_loopback(host) or settings.api_tokens or settings.allow_open_lan:
        return
    raise ConfigError(
        f"bind_host: {host} is beyond loopback and no api_tokens are set; set SPARK_API_TOKENS "
        "(name:scopes:token) or, to serve everyone on the network without tokens, "
        "SPARK_ALLOW_OPEN_LAN=1"
    )


@dataclass(frozen=True)
class Access:
    """The front's access rules, built once from the settings (kept on ``app.state.access``)."""

    tokens: TokenTable
    open_lan: bool
    """Beyond loopback, no tokens, opted in: the pages show a warning banner."""

    @property
    def required(self) -> bool:
        return self.tokens.required

    @classmethod
    def from_settings(cls, settings: Settings) -> Access:
        try:
            table = TokenTable(settings.api_tokens, settings.signer_tokens)
        except ValueError as exc:
            raise ConfigError(f"settings: {exc}") from exc
        open_lan = (
            settings.allow_open_lan
            and not table.required
            and not is_loopback(exposed_host(settings))
        )
        return cls(tokens=table, open_lan=open_lan)
