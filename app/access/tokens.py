"""API tokens: parsed from settings, kept only as SHA-256 digests, looked up in constant time.

A token is ``{name, scopes, sha256}`` (or a plain ``token`` in the settings file or
``SPARK_API_TOKENS``, hashed as the settings load, the plain text then dropped). Messages name a
token by its position or name, never by its value.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sys
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import msgspec

CONTROL = "control"
"""Swaps, services, settings, host actions, the swap lock, the schedule, models, NIM."""
INFERENCE = "inference"
"""``/v1/*``, ``/scrub``, ``/rehydrate``, ``/api/audio/*``, ``/api/health-event``."""
READ = "read"
"""Every GET of the dashboard and the API."""
SIGN = "sign"
"""The blob signer; held by ``signer_tokens`` (token → namespace), not by ``api_tokens``."""

API_SCOPES = (CONTROL, INFERENCE, READ)
IMPLIED = {CONTROL: frozenset({READ})}
"""A token that may act may also look."""

MIN_TOKEN_LENGTH = 16
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ApiToken(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """One API token: exactly one of ``sha256`` (hex digest) or ``token`` (plain, hashed at
    load)."""

    name: str
    scopes: list[str]
    sha256: str | None = None
    token: str | None = None

    def __repr__(self) -> str:
        return f"ApiToken(name={self.name!r}, scopes={self.scopes!r})"


class Identity(NamedTuple):
    """Who a request's token says it is, and what it may do."""

    name: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return scope in self.scopes


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_env(value: str) -> list[dict[str, Any]]:
    """``name:scope1+scope2:token,…`` → raw entries; ValueError names the entry by position."""
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(e.strip() for e in value.split(",")):
        if not entry:
            continue
        name, _, rest = entry.partition(":")
        scopes, sep, token = rest.partition(":")
        if not sep or not name.strip() or not scopes.strip() or not token.strip():
            raise ValueError(f"entry {i + 1}: expected name:scope1+scope2:token")
        out.append(
            {"name": name.strip(), "scopes": scopes.strip().split("+"), "token": token.strip()}
        )
    return out


def normalise(tokens: Iterable[ApiToken]) -> list[ApiToken]:
    """Validated tokens with only their digests kept; ValueError names the token and the rule."""
    out: list[ApiToken] = []
    names: set[str] = set()
    for i, t in enumerate(tokens):
        where = f"api_tokens[{i}]"
        if not _NAME.fullmatch(t.name):
            raise ValueError(f"{where}.name: must match [A-Za-z0-9_.-]{{1,64}}")
        where = f"api_tokens.{t.name}"
        if t.name in names:
            raise ValueError(f"{where}: defined twice")
        names.add(t.name)
        if not t.scopes:
            raise ValueError(f"{where}.scopes: at least one of {', '.join(API_SCOPES)}")
        for scope in t.scopes:
            if scope == SIGN:
                raise ValueError(
                    f"{where}.scopes: 'sign' belongs to signer_tokens (SPARK_SIGNER_TOKENS), "
                    "which also name the namespace"
                )
            if scope not in API_SCOPES:
                raise ValueError(f"{where}.scopes: unknown scope; one of {', '.join(API_SCOPES)}")
        if (t.sha256 is None) == (t.token is None):
            raise ValueError(f"{where}: give exactly one of sha256 or token")
        if t.token is not None:
            if len(t.token) < MIN_TOKEN_LENGTH or re.search(r"[\s,]", t.token):
                raise ValueError(
                    f"{where}.token: at least {MIN_TOKEN_LENGTH} characters, no spaces or commas"
                )
            hexdigest = digest(t.token).hex()
        else:
            hexdigest = (t.sha256 or "").lower()
            if not _HEX64.fullmatch(hexdigest):
                raise ValueError(f"{where}.sha256: must be 64 hex digits")
        out.append(ApiToken(name=t.name, scopes=sorted(set(t.scopes)), sha256=hexdigest))
    return out


class TokenTable:
    """Every known token's digest with its identity: ``api_tokens`` and, with scope ``sign``
    only, ``signer_tokens`` (so a signer token elsewhere is FORBIDDEN_SCOPE, not unknown)."""

    def __init__(self, api_tokens: Iterable[ApiToken], signer_tokens: Mapping[str, str]) -> None:
        self._entries: list[tuple[bytes, Identity]] = []
        for t in normalise(api_tokens):
            scopes = set(t.scopes)
            for scope in t.scopes:
                scopes |= IMPLIED.get(scope, frozenset())
            self._entries.append(
                (bytes.fromhex(t.sha256 or ""), Identity(t.name, frozenset(scopes)))
            )
        self.required = bool(self._entries)
        """Tokens are configured: every request outside the open paths needs one."""
        for token, namespace in signer_tokens.items():
            self._entries.append(
                (digest(token), Identity(f"signer:{namespace}", frozenset({SIGN})))
            )

    def lookup(self, given: str) -> Identity | None:
        """The identity of a presented token: every digest compared, in constant time each."""
        presented = digest(given)
        found = None
        for known, identity in self._entries:
            if hmac.compare_digest(known, presented) and found is None:
                found = identity
        return found


def new_token() -> str:
    """A fresh random token (URL-safe, 256 bits)."""
    return secrets.token_urlsafe(32)


def main(argv: list[str]) -> None:
    """``python -m app.access.tokens [NAME] [SCOPES]``: a new token, its env entry, its digest."""
    name = argv[0] if argv else "dashboard"
    scopes = argv[1] if len(argv) > 1 else CONTROL
    fresh = new_token()
    print(f"SPARK_API_TOKENS entry: {name}:{scopes}:{fresh}")
    print("or, in the settings file (the digest only; give the token to the client once):")
    listed = ", ".join(scopes.split("+"))
    print(f"  - {{name: {name}, scopes: [{listed}], sha256: {digest(fresh).hex()}}}")
    print(f"token: {fresh}")


if __name__ == "__main__":
    main(sys.argv[1:])
