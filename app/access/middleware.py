"""The access middleware: the cross-site guard, then the token check, before any handler runs.
Refusals are raised as the project's errors, so the app's one mapper renders them (JSON,
an htmx fragment or an HTML page, as for every other error)."""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from app.access import guard
from app.access.policy import COOKIE, Access, required_scope
from app.access.tokens import SIGN
from app.errors import Forbidden, Unauthorized


class CrossSite(Forbidden):
    code = "CROSS_SITE"


class ForbiddenScope(Forbidden):
    code = "FORBIDDEN_SCOPE"


def presented_token(connection: ASGIConnection) -> str | None:
    """``Authorization: Bearer <token>``, else the dashboard's cookie."""
    scheme, _, given = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and given.strip():
        return given.strip()
    return connection.cookies.get(COOKIE) or None


class AccessMiddleware(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, access: Access) -> None:
        self.access = access

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        connection: ASGIConnection = ASGIConnection(scope)
        method, path = scope["method"], scope["path"]  # type: ignore[typeddict-item]
        if guard.refuses(method, path, connection.headers):
            raise CrossSite("cross-site request refused: its Origin/Referer is not this host")
        need = required_scope(method, path)
        if self.access.required and need not in (None, SIGN):
            given = presented_token(connection)
            if not given:
                raise Unauthorized("a token is required (Authorization: Bearer, or sign in)")
            identity = self.access.tokens.lookup(given)
            if identity is None:
                raise Unauthorized("unknown token")
            if not identity.allows(need):
                raise ForbiddenScope(f"token {identity.name!r} lacks the {need!r} scope")
            scope["state"]["access"] = identity
        await next_app(scope, receive, send)
